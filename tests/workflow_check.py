"""Check shipped workflows against node schemas, and convert the UI format to the API format.

Schemas are /object_info entries: ComfyUI's from ../shared/comfyui/object_info.json, the pack's from
tests/data/pack_object_info.json (written by comfyui_scripts/dump_pack_object_info.py). The rules follow ComfyUI
0.8.0's prompt validation (execution.py `validate_inputs`, comfy_execution/validation.py `validate_node_input`) and
its frontend's widgets (which widgets a node has, in which order, and how numbers are rounded).

Run as a script to (re)write workflows/api/*.json from workflows/*.json: `python tests/workflow_check.py`.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACK_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = PACK_ROOT / "workflows"
API_WORKFLOWS = WORKFLOWS / "api"
COMFY_OBJECT_INFO = PACK_ROOT.parent / "shared" / "comfyui" / "object_info.json"
PACK_OBJECT_INFO = PACK_ROOT / "tests" / "data" / "pack_object_info.json"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # nodes the frontend draws and never sends to the server
CONTROL = "control_after_generate"  # frontend-only widget after a seed: what to do with the value after queueing
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
UPLOAD = "upload"  # frontend-only upload button after an image_upload combo; its value is the combo's folder
MODEL_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
FAMILY = "<family>"  # a combo of "<family>/<folder>" names, the folder inside that family's models folder
FAMILY_FOLDERS = {"CogVideoX-Fun": "CogVideoX_Fun", "EasyAnimate": "EasyAnimate"}  # as nodes/folders.py registers them
# ComfyUI 0.8.0 lists a custom node's templates by file name only (GET /workflow_templates); frontend 1.35.9 shows the
# name as the card's title, the name with - and _ read as spaces as its description, and `<name>.jpg` beside the .json
# as its thumbnail (GET /api/workflow_templates/<pack>/<name>.jpg).
THUMBNAIL = ".jpg"
TITLE_CHARACTERS = re.compile(r"[A-Za-z0-9 .,()-]{8,30}")  # safe in the URLs the frontend builds; 30 fit a card's title line
# Frontend 1.35.9's Missing Models dialog: each node's properties.models entries whose name one of its widgets holds, and
# the workflow's top-level `models`, each {name, url, directory}; an entry is missing when `name` is not among the
# weight files (model extensions only) that GET /experiment/models/<directory> lists, paths relative to the folder.
# It offers a download only for URLs from these sources and names with these suffixes; other entries are still listed.
DOWNLOAD_SOURCES = ("https://civitai.com/", "https://huggingface.co/", "http://localhost:")
DOWNLOAD_SUFFIXES = (".safetensors", ".sft")
NOT_EXPRESSIBLE = {  # (folder, name): why no entry can stand for it
    ("reward_models", "CLIP-ViT-H-14-laion2B-s32B-b79K"): "a folder of tokenizer files only (.json/.txt), which the "
    "dialog's file list never shows; naming the 3.9 GB weights file would demand a download nobody needs",
}
# Combos whose options are the files in a user's folder: (node type, input) -> (folder, extensions; None = any entry)
MODEL_FILE_INPUTS: dict[tuple[str, str], tuple[str, set[str] | None]] = {
    ("UNETLoader", "unet_name"): ("diffusion_models", MODEL_EXTENSIONS),
    ("CLIPLoader", "clip_name"): ("text_encoders", MODEL_EXTENSIONS),
    ("VAELoader", "vae_name"): ("vae", MODEL_EXTENSIONS),
    ("LoraLoaderModelOnly", "lora_name"): ("loras", MODEL_EXTENSIONS),
    ("LoadImage", "image"): ("input", IMAGE_EXTENSIONS),
    ("WanRewardLoraPair", "lora_high"): ("loras", MODEL_EXTENSIONS),
    ("WanRewardLoraPair", "lora_low"): ("loras", MODEL_EXTENSIONS),
    ("RewardLoraLoader", "lora"): ("loras", MODEL_EXTENSIONS),
    ("VideoModelRewardLora", "lora"): ("loras", MODEL_EXTENSIONS),
    ("BakeRewardLora", "lora"): ("loras", MODEL_EXTENSIONS),
    ("BakeRewardLora", "checkpoint"): ("diffusion_models", MODEL_EXTENSIONS),
    ("ConvertRewardLora", "lora"): ("loras", MODEL_EXTENSIONS),
    ("CogVideoXFunLoader", "model"): ("CogVideoX_Fun", None),
    ("EasyAnimateLoader", "model"): ("EasyAnimate", None),
    ("VideoRewardModelLoader", "checkpoint"): ("reward_models", None),
    ("VideoRewardModelLoader", "encoder"): ("reward_models", None),
}
JOB_NODES = ("TrainRewardLoRA", "BuildPreferencePairs", "TrainDPOLoRA")  # nodes that start a job; each loads its rewards
MODEL_FILE_INPUTS.update({(node, name): where for node in JOB_NODES for name, where in {
    "model_folder": (FAMILY, None), "wan_high": ("diffusion_models", MODEL_EXTENSIONS),
    "wan_low": ("diffusion_models", MODEL_EXTENSIONS), "wan_vae": ("vae", MODEL_EXTENSIONS),
    "wan_text_encoder": ("text_encoders", MODEL_EXTENSIONS)}.items()})
MODEL_FILE_INPUTS.update({(node, "prompts_file"): ("input", {".txt", ".jsonl"}) for node in ("TrainRewardLoRA", "BuildPreferencePairs")})


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # io type; "COMBO" for both combo forms
    options: dict
    required: bool
    choices: tuple | None = None  # combo options

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput")


def load_schemas(*paths: Path) -> dict[str, dict]:
    schemas: dict[str, dict] = {}
    for path in paths or (COMFY_OBJECT_INFO, PACK_OBJECT_INFO):
        schemas.update(json.loads(path.read_text()))
    return schemas


def inputs_of(schema: dict) -> list[InputSpec]:
    """Required then optional inputs, in the schema's order."""
    specs = []
    for section in ("required", "optional"):
        for name in schema.get("input_order", {}).get(section, []):
            raw = schema["input"][section][name]
            options = raw[1] if len(raw) > 1 else {}
            if isinstance(raw[0], list):
                specs.append(InputSpec(name, "COMBO", options, section == "required", tuple(raw[0])))
            elif raw[0] == "COMBO":
                specs.append(InputSpec(name, "COMBO", options, section == "required", tuple(options.get("options", []))))
            else:
                specs.append(InputSpec(name, raw[0], options, section == "required"))
    return specs


def widget_slots(schema: dict) -> list[tuple[str, InputSpec | None]]:
    """The frontend's widgets in `widgets_values` order: (input name, spec), with (CONTROL, None) after a seed-like
    INT (the schema's control_after_generate flag, else an INT named seed or noise_seed) or a flagged combo, and
    (UPLOAD, None) after an image_upload combo."""
    slots: list[tuple[str, InputSpec | None]] = []
    for spec in inputs_of(schema):
        if not spec.is_widget:
            continue
        slots.append((spec.name, spec))
        flag = spec.options.get(CONTROL)
        if (spec.type == "INT" and (flag if flag is not None else spec.name in ("seed", "noise_seed"))) or (spec.type == "COMBO" and flag):
            slots.append((CONTROL, None))
        if spec.type == "COMBO" and spec.options.get("image_upload"):
            slots.append((UPLOAD, None))
    return slots


def types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's link rule: equal, `*` on either side, a list of options into a combo, or overlapping unions."""
    if received == expected or "*" in (received, expected):
        return True
    if isinstance(received, list) and expected == "COMBO":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got, want = {t.strip() for t in received.split(",")}, {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def _rounding(options: dict) -> float | None:
    """The unit the frontend rounds a FLOAT widget to (its `round`, else 10^-precision of its step)."""
    if "round" in options:
        return options["round"] or None
    precision = max(0, -math.floor(math.log10(options.get("step", 0.5))))
    return 10.0 ** -precision if precision else None


def value_errors(node_type: str, spec: InputSpec, value: Any) -> list[str]:
    """Why `value` is not allowed for this widget (empty when it is)."""
    where = f"{node_type}.{spec.name}"
    kind, options = spec.type, spec.options
    if kind == "COMBO":
        if value in (spec.choices or ()):
            return []
        if (node_type, spec.name) in MODEL_FILE_INPUTS:
            folder, extensions = MODEL_FILE_INPUTS[(node_type, spec.name)]
            if not isinstance(value, str) or not value or ".." in Path(value).parts or Path(value).is_absolute():
                return [f"{where}: {value!r} is not a file name in models/{folder}"]
            if folder == FAMILY and (len(Path(value).parts) < 2 or Path(value).parts[0] not in FAMILY_FOLDERS):
                return [f"{where}: {value!r} is not '<family>/<folder>' with a family in {list(FAMILY_FOLDERS)}"]
            if extensions is not None and Path(value).suffix.lower() not in extensions:
                return [f"{where}: {value!r} is not a {'/'.join(sorted(extensions))} file for {folder}"]
            return []
        return [f"{where}: {value!r} not in {list(spec.choices or ())}"]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a boolean"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a string"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and not isinstance(value, int)):
        return [f"{where}: {value!r} is not {kind}"]
    errors = []
    if "min" in options and value < options["min"]:
        errors.append(f"{where}: {value} is below the minimum {options['min']}")
    if "max" in options and value > options["max"]:
        errors.append(f"{where}: {value} is above the maximum {options['max']}")
    if kind == "INT" and options.get("step", 1) > 1:
        step = options["step"]
        offset = options.get("min", 0) % step
        if (value - offset) % step:
            errors.append(f"{where}: {value} is not on the widget's grid ({offset} + k*{step})")
    if kind == "FLOAT" and (unit := _rounding(options)) is not None and abs(value / unit - round(value / unit)) > 1e-6:
        errors.append(f"{where}: {value} is not a multiple of the widget's rounding {unit:g}")
    return errors


def _outputs(schema: dict) -> list[Any]:
    return list(schema.get("output", []))


def check_api(graph: dict, schemas: dict[str, dict]) -> list[str]:
    """Errors in an API-format graph: unknown nodes or inputs, missing required inputs, bad links, bad values."""
    errors = []
    for node_id, node in graph.items():
        node_type = node.get("class_type")
        if node_type not in schemas:
            errors.append(f"node {node_id}: unknown node type {node_type!r}")
            continue
        specs = {spec.name: spec for spec in inputs_of(schemas[node_type])}
        for name in node.get("inputs", {}):
            if name not in specs:
                errors.append(f"node {node_id} ({node_type}): no input named {name!r}")
        for name, spec in specs.items():
            value = node.get("inputs", {}).get(name)
            if value is None:
                if spec.required:
                    errors.append(f"node {node_id} ({node_type}): required input {name!r} is missing")
            elif isinstance(value, list):
                source, slot = value if len(value) == 2 else (None, None)
                if source not in graph or graph[source].get("class_type") not in schemas:
                    errors.append(f"node {node_id} ({node_type}).{name}: link from missing node {source!r}")
                    continue
                outputs = _outputs(schemas[graph[source]["class_type"]])
                if not isinstance(slot, int) or not 0 <= slot < len(outputs):
                    errors.append(f"node {node_id} ({node_type}).{name}: node {source} has no output {slot}")
                elif not types_match(outputs[slot], spec.type):
                    errors.append(f"node {node_id} ({node_type}).{name}: {outputs[slot]} from node {source} into {spec.type}")
            elif not spec.is_widget:
                errors.append(f"node {node_id} ({node_type}).{name}: a {spec.type} input needs a link, got {value!r}")
            else:
                errors += [f"node {node_id}: {e}" for e in value_errors(node_type, spec, value)]
    return errors


def check_ui(graph: dict, schemas: dict[str, dict]) -> list[str]:
    """Errors in a UI-format (frontend) graph: node types, widget values, input/output slots and the links array."""
    errors = []
    nodes = {node["id"]: node for node in graph.get("nodes", [])}
    links = {link[0]: link for link in graph.get("links", [])}
    if len(nodes) != len(graph.get("nodes", [])) or len(links) != len(graph.get("links", [])):
        errors.append("node or link ids are not unique")
    if max(nodes, default=0) > graph.get("last_node_id", -1) or max(links, default=0) > graph.get("last_link_id", -1):
        errors.append("last_node_id / last_link_id are below the ids in use")
    for node_id, node in nodes.items():
        node_type, where = node.get("type"), f"node {node_id} ({node.get('type')})"
        if not (len(node.get("pos", ())) == 2 and len(node.get("size", ())) == 2):
            errors.append(f"{where}: needs pos and size")
        if node.get("mode", 0) != 0:
            errors.append(f"{where}: mode {node['mode']} (muted or bypassed nodes are not shipped)")
        if node_type in FRONTEND_ONLY:
            values = node.get("widgets_values", [])
            if len(values) != 1 or not isinstance(values[0], str):
                errors.append(f"{where}: a note holds one text")
            continue
        if node_type not in schemas:
            errors.append(f"{where}: unknown node type")
            continue
        schema = schemas[node_type]
        slots, values = widget_slots(schema), node.get("widgets_values", [])
        if len(values) != len(slots):
            errors.append(f"{where}: {len(values)} widget values for widgets {[name for name, _ in slots]}")
        else:
            for (name, spec), value in zip(slots, values):
                if spec is not None:
                    errors += [f"node {node_id}: {e}" for e in value_errors(node_type, spec, value)]
                elif name == CONTROL and value not in CONTROL_VALUES:
                    errors.append(f"{where}: {CONTROL} {value!r} not in {sorted(CONTROL_VALUES)}")
                elif name == UPLOAD and value != "image":
                    errors.append(f"{where}: upload widget value {value!r} should be 'image'")
        specs = {spec.name: spec for spec in inputs_of(schema)}
        linked = set()
        for index, entry in enumerate(node.get("inputs", [])):
            spec = specs.get(entry.get("name"))
            if spec is None:
                errors.append(f"{where}: no input named {entry.get('name')!r}")
                continue
            if entry.get("type") != spec.type and not (spec.type == "COMBO" and entry.get("type") == "COMBO"):
                errors.append(f"{where}.{spec.name}: slot type {entry.get('type')!r}, schema says {spec.type!r}")
            if spec.is_widget and entry.get("widget", {}).get("name") != spec.name:
                errors.append(f"{where}.{spec.name}: a widget input slot needs widget.name")
            link_id = entry.get("link")
            if link_id is None:
                continue
            link = links.get(link_id)
            if link is None or link[3] != node_id or link[4] != index:
                errors.append(f"{where}.{spec.name}: link {link_id} does not end here")
                continue
            linked.add(spec.name)
            source = nodes.get(link[1])
            if source is None or source.get("type") not in schemas:
                errors.append(f"{where}.{spec.name}: link {link_id} from unknown node {link[1]}")
                continue
            outputs = _outputs(schemas[source["type"]])
            if not 0 <= link[2] < len(outputs):
                errors.append(f"{where}.{spec.name}: node {link[1]} has no output {link[2]}")
                continue
            if link[5] != outputs[link[2]] or not types_match(outputs[link[2]], spec.type):
                errors.append(f"{where}.{spec.name}: link {link_id} carries {link[5]} ({outputs[link[2]]} from node {link[1]}) into {spec.type}")
            source_outputs = source.get("outputs", [])
            if link[2] >= len(source_outputs) or link_id not in (source_outputs[link[2]].get("links") or []):
                errors.append(f"node {link[1]}: output {link[2]} does not list link {link_id}")
        for name, spec in specs.items():
            if spec.required and not spec.is_widget and name not in linked:
                errors.append(f"{where}: required input {name!r} is not connected")
        declared = node.get("outputs", [])
        if [out.get("type") for out in declared] != _outputs(schema):
            errors.append(f"{where}: outputs {[out.get('type') for out in declared]}, schema says {_outputs(schema)}")
        for slot, out in enumerate(declared):
            for link_id in out.get("links") or []:
                if link_id not in links or links[link_id][1] != node_id or links[link_id][2] != slot:
                    errors.append(f"{where}: output {slot} lists link {link_id}, which does not start there")
        for model in node.get("properties", {}).get("models", []):
            names = {v for (name, spec), v in zip(slots, values) if spec is not None and (node_type, name) in MODEL_FILE_INPUTS}
            if model.get("name") not in names:
                errors.append(f"{where}: properties.models names {model.get('name')!r}, which no widget selects")
    return errors


def ui_to_api(graph: dict, schemas: dict[str, dict]) -> dict:
    """The API-format graph ComfyUI runs for a UI-format graph (notes dropped, widgets by name, links as [id, slot])."""
    links = {link[0]: link for link in graph["links"]}
    api = {}
    for node in sorted(graph["nodes"], key=lambda n: n["id"]):
        if node["type"] in FRONTEND_ONLY:
            continue
        schema = schemas[node["type"]]
        inputs = {name: value for (name, spec), value in zip(widget_slots(schema), node.get("widgets_values", [])) if spec is not None}
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                inputs[entry["name"]] = [str(link[1]), link[2]]
        api[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                "_meta": {"title": node.get("title") or schema.get("display_name") or node["type"]}}
    return api


def set_widgets(graph: dict, schemas: dict[str, dict], values: dict[str, dict[str, Any]]) -> dict:
    """A copy of a UI- or API-format graph with some widget values replaced: {node id: {input: value}}."""
    graph = json.loads(json.dumps(graph))
    if "nodes" not in graph:
        for node_id, changes in values.items():
            graph[node_id]["inputs"].update(changes)
        return graph
    for node in graph["nodes"]:
        for name, value in values.get(str(node["id"]), {}).items():
            index = [slot for slot, _ in widget_slots(schemas[node["type"]])].index(name)
            node["widgets_values"][index] = value
    return graph


def model_files(api: dict, schemas: dict[str, dict]) -> set[tuple[str, str]]:
    """(folder, name) of every file or folder an API-format graph picks from a user's model or input folders."""
    files = set()
    for node in api.values():
        choices = {spec.name: spec.choices or () for spec in inputs_of(schemas[node["class_type"]])}
        for name, value in node["inputs"].items():
            if (node["class_type"], name) not in MODEL_FILE_INPUTS or not isinstance(value, str):
                continue
            folder, extensions = MODEL_FILE_INPUTS[(node["class_type"], name)]
            if Path(value).suffix.lower() in extensions if extensions else value not in choices[name]:
                if folder == FAMILY:
                    family, _, value = value.partition("/")
                    folder = FAMILY_FOLDERS[family]
                files.add((folder, value))
    return files


def needed_models(api: dict, schemas: dict[str, dict]) -> set[tuple[str, str]]:
    """(folder, name) of every model file or folder an API-format graph needs: those its widgets pick, and the
    official files of the rewards it loads by their `auto` names, trains with or judges with."""
    from video_reward_lora.reward.registry import REWARDS

    needed = {(folder, name) for folder, name in model_files(api, schemas) if folder != "input"}
    by_label = {spec.label: spec for spec in REWARDS.values()}
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "VideoRewardModelLoader":  # a listed option (`auto`) stands for the official name
            spec, choices = by_label[inputs["model"]], {s.name: s.choices or () for s in inputs_of(schemas[node["class_type"]])}
            needed |= {("reward_models", official) for name, official in (("checkpoint", spec.checkpoint), ("encoder", spec.encoder))
                       if inputs[name] in choices[name]}
        elif node["class_type"] in JOB_NODES:
            for key in (inputs.get(name, "none") for name in ("reward", "reward_2", "judge", "judge_2")):
                if key in REWARDS:  # the clip rewards Flicker and Dynamism need no files
                    needed |= {("reward_models", file) for file in (REWARDS[key].checkpoint, REWARDS[key].encoder) if file}
    return needed


def download_entries(ui: dict) -> list[dict]:
    """The entries frontend 1.35.9's Missing Models dialog checks: each node's properties.models whose name one of
    its widgets holds, and the workflow's top-level `models`."""
    entries = []
    for node in ui.get("nodes", []):
        values = {v for v in node.get("widgets_values") or [] if isinstance(v, str)}
        entries += [m for m in node.get("properties", {}).get("models", []) if m.get("name") in values]
    return entries + list(ui.get("models", []))


def metadata_gaps(ui: dict, schemas: dict[str, dict]) -> list[str]:
    """Model files and folders of a UI-format graph that the Missing Models dialog cannot warn about, and malformed
    entries. A folder counts as covered by an entry for a weight file inside it."""
    entries = download_entries(ui)
    errors = [f"download entry {m} needs a name, an https url and a directory" for m in entries
              if not (m.get("name") and str(m.get("url", "")).startswith("https://") and m.get("directory"))]
    for folder, name in sorted(needed_models(ui_to_api(ui, schemas), schemas)):
        if (folder, name) in NOT_EXPRESSIBLE:
            continue
        if not any(m.get("directory") == folder and (m.get("name") == name or str(m.get("name")).startswith(f"{name}/"))
                   for m in entries):
            errors.append(f"models/{folder}/{name} has no download entry")
    return errors


def template_card(path: Path) -> dict[str, Any]:
    """The template browser's card for a shipped UI file, as frontend 1.35.9 builds it."""
    return {"title": path.stem, "description": re.sub(r"[-_]", " ", path.stem).strip(), "thumbnail": path.with_suffix(THUMBNAIL)}


def write_api_twins() -> list[Path]:
    schemas = load_schemas()
    API_WORKFLOWS.mkdir(exist_ok=True)
    written = []
    for path in sorted(WORKFLOWS.glob("*.json")):
        target = API_WORKFLOWS / path.name
        target.write_text(json.dumps(ui_to_api(json.loads(path.read_text()), schemas), indent=2, ensure_ascii=False) + "\n")
        written.append(target)
    return written


if __name__ == "__main__":
    for written in write_api_twins():
        print(f"wrote {written.relative_to(PACK_ROOT)}")
