"""Test set-up: 8 virtual CPU devices for every sharding test, set before jax is imported."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI caches compiles under ~/.cache by default; tests neither write there nor depend on
# what an earlier run left (tests/test_host.py turns it on in a temp folder to test it).
os.environ.setdefault("JAXLLM_COMPILATION_CACHE", "off")
