"""jaxllm: raw text to a trained, aligned and evaluated decoder LM, in JAX/Flax.

The functional API works on (config, params, tokens) and needs no CLI:

    import jax, jaxllm
    cfg = jaxllm.load_config("gpt2-124m", ["model.num_layers=2"])
    params = jaxllm.init_params(cfg, jax.random.key(0))
    logits = jaxllm.forward(cfg, params, tokens)
    out = jaxllm.generate(cfg, params, [[1, 2, 3]], max_new_tokens=20, temperature=0.8, top_p=0.95)

(`jaxllm.generate` is the function; the generation code lives in the package
`jaxllm.generation`, e.g. `from jaxllm.generation import prefill, decode_step`.)
"""

from jaxllm.host import quiet_startup_interrupts, skip_absent_tpu

quiet_startup_interrupts()  # the `jaxllm` command: Ctrl-C while jax imports is one line, exit 130
skip_absent_tpu()  # no libtpu banner on hosts without a TPU: see jaxllm/host.py

from jaxllm.config import Config, ConfigError, load_config  # noqa: E402
from jaxllm.generation import Generation, GenerationError, generate, generate_stream  # noqa: E402
from jaxllm.model import (  # noqa: E402
    count_params,
    cross_entropy,
    flops_per_token,
    forward,
    init_params,
    loss,
    param_logical_axes,
    param_shapes,
)

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "count_params",
    "cross_entropy",
    "flops_per_token",
    "forward",
    "generate",
    "generate_stream",
    "Generation",
    "GenerationError",
    "init_params",
    "load_config",
    "loss",
    "param_logical_axes",
    "param_shapes",
]
