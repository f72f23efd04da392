"""Differentiable preference rewards for video frames (no ComfyUI imports)."""
