"""Training: mesh-sharded steps, optimizers, checkpoints and the loop."""
