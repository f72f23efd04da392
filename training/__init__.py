"""Reward-LoRA training and the LoRA tooling it shares with inference (no ComfyUI imports)."""
