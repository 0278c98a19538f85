"""Post-training: instruction tuning (SFT), reward models, PPO and DPO, on the
pre-training loop and sharding (jaxllm/train/)."""
