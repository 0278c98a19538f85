"""Text generation with a KV cache: prefill the prompts, then decode token by token.

Where things live:
  steps.py  the compiled prefill / decode steps (one program per shape bucket) and the
            public building blocks `prefill`, `decode_step`, `left_pad`, `bucket`
  loop.py   the host side: request checks, round-by-round driving (context overflow,
            streaming), the `Generation` result
  api.py    `generate`, `generate_stream`, `sample`

This is a package, not a `generate` module, because `jaxllm.generate` is the function
(jaxllm/__init__.py re-exports it) and a module of the same name would be shadowed by it.
"""

from jaxllm.generation.api import generate, generate_stream, sample
from jaxllm.generation.loop import Generation
from jaxllm.generation.steps import NO_TOKEN, bucket, decode_step, left_pad, prefill
from jaxllm.sampling import GenerationError

__all__ = [
    "NO_TOKEN",
    "Generation",
    "GenerationError",
    "bucket",
    "decode_step",
    "generate",
    "generate_stream",
    "left_pad",
    "prefill",
    "sample",
]
