// Shows the text the pack's nodes return (scores, rankings, LoRA reports, training status) on the node itself, and
// keeps Training Status current while its job runs. ComfyUI's frontend draws no `text` output for custom nodes.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const CATEGORY = "video reward";
const WIDGET = "result";
const STATUS_NODE = "RewardTrainingStatus";
const LINE_HEIGHT = 16;
const MAX_LINES = 18;
const FONT = "12px monospace";
const PADDING = 40; // the node's margins around the text box, in pixels

let charWidth = null;

function rowsFor(text, width) {
  // the rows the text takes in a box `width` pixels wide, long lines wrapped
  if (charWidth === null) {
    const context = document.createElement("canvas").getContext("2d");
    context.font = FONT;
    charWidth = context.measureText("0").width;
  }
  const perRow = Math.max(8, Math.floor((width - PADDING) / charWidth));
  return text.split("\n").reduce((rows, line) => rows + Math.max(1, Math.ceil(line.length / perRow)), 0);
}

function textOf(message) {
  const text = message?.text;
  return Array.isArray(text) ? text.join("\n") : text ?? null;
}

function resultWidget(node) {
  const existing = node.widgets?.find((w) => w.name === WIDGET);
  if (existing) return existing;
  const area = document.createElement("textarea");
  area.readOnly = true;
  area.className = "comfy-multiline-input video-reward-result";
  Object.assign(area.style, { whiteSpace: "pre-wrap", overflowWrap: "anywhere", resize: "none", font: FONT,
    lineHeight: `${LINE_HEIGHT}px` });
  const widget = node.addDOMWidget(WIDGET, "video_reward_result", area, {
    getValue: () => area.value,
    setValue: (value) => { area.value = value; },
    getMinHeight: () => LINE_HEIGHT * Math.min(MAX_LINES, rowsFor(area.value, node.size[0]) + 1),
    serialize: false,
  });
  widget.serialize = false;
  return widget;
}

function show(node, text) {
  const widget = resultWidget(node);
  widget.value = text;
  const needed = node.computeSize();
  node.setSize([Math.max(node.size[0], needed[0]), Math.max(node.size[1], needed[1])]);
  node.setDirtyCanvas(true, true);
}

function watchesJob(node, detail) {
  // a Training Status node watches the job its job_id input names: the latest job of the Train Reward LoRA node
  // linked to it, or the id typed into its widget
  const input = node.inputs?.find((slot) => slot.name === "job_id");
  if (input?.link != null) {
    const link = node.graph?.links?.get?.(input.link) ?? node.graph?.links?.[input.link];
    const trainer = link != null ? node.graph.getNodeById(link.origin_id) : null;
    return trainer != null && String(trainer.id) === String(detail.node) && (trainer.videoRewardJob ?? detail.job) === detail.job;
  }
  return node.widgets?.find((w) => w.name === "job_id")?.value?.trim() === detail.job;
}

app.registerExtension({
  name: "VideoRewardLoRA.ResultText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.category?.startsWith(CATEGORY)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.video_reward_job) this.videoRewardJob = message.video_reward_job[0];
      const text = textOf(message);
      if (text !== null) show(this, text);
    };
  },
  setup() {
    api.addEventListener("video_reward.training", ({ detail }) => {
      for (const node of app.graph?.nodes ?? []) {
        if (node.type === STATUS_NODE && watchesJob(node, detail)) show(node, detail.text);
      }
    });
  },
});
