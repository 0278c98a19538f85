"""Pictures made by jaxllm itself (matplotlib PNGs), for the guide and for looking inside a run.

- attention.py: attention maps of a prompt, per layer and head, and one head across checkpoints;
- tokens.py: a text with its token boundaries coloured;
- mesh.py: which device holds which shard of a parameter on a given mesh.

The run's loss / learning-rate / throughput curves are `jaxllm plot` (jaxllm/viz/curves.py).
"""
