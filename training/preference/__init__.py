"""Preference pairs for DPO training: choosing and weighting pairs (`pairs`), the dataset in VideoDPO's layout plus
our latents (`dataset`), and its mp4 clips (`video`)."""
