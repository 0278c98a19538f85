"""Training: optimizer, the sharded train step, the one host loop every run turns on
(pre-training here, post-training in jaxllm/posttrain/), checkpoints, metrics."""
