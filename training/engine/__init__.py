"""The training engine every method runs on (optimizer, accumulation, back-ends, clipping, checkpoints) and its
checkpoint format."""
