"""Pre-training: optimizer, sharded train step, loop, checkpoints, metrics."""
