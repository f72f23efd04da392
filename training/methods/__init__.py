"""Training methods: each supplies what it loads, the loss of one micro-batch and its evaluation to the engine."""
