"""Video Reward LoRA: preference rewards and reward LoRAs for video diffusion models, as ComfyUI nodes.

ComfyUI imports this file from custom_nodes/. It registers the model folders (reward_models, CogVideoX_Fun,
EasyAnimate) and hands ComfyUI the node list; heavy libraries (transformers, diffusers) are imported only when a
node runs. Imported outside ComfyUI (by test runners or tools), it registers nothing.
"""
try:
    from .nodes.folders import register_model_folders
except ModuleNotFoundError as missing:
    if missing.name != "folder_paths":
        raise
else:
    register_model_folders()

WEB_DIRECTORY = "./web"  # the frontend extension that shows the nodes' text results on the nodes


async def comfy_entrypoint():
    from .nodes.extension import VideoRewardExtension

    return VideoRewardExtension()
