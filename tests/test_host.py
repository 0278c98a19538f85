"""Process-level settings of jaxllm/host.py: no libtpu banner on a host without a TPU, and
the CLI's persistent compilation cache (where it goes, how it is turned off)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaxllm.host import CACHE_ENV, compilation_cache_dir, tpu_attached
from tests.data_paths import TINY
from tests.fixtures import TEST_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]
# What libtpu prints when it starts on a host without a chip (each line seen before the fix).
LIBTPU_NOISE = re.compile(r"InitGoogle|E0000|Source Location Trace|libtpu|TPU")
SMALL = ["model.d_model=32", "model.num_heads=2", "model.num_layers=1", "tokenizer.path=byte",
         "train.batch_size=2", "train.eval_batches=1", "train.tensorboard=false"]  # fmt: skip


def _env_without_platforms(**extra: str) -> dict[str, str]:
    """The test environment minus conftest's JAX_PLATFORMS=cpu and 8-device XLA_FLAGS: jax
    then discovers backends as it does for a user, libtpu included (the tests' compile-speed
    flag stays: it changes no backend discovery)."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    return {**env, "XLA_FLAGS": TEST_XLA_FLAGS, **extra}


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


needs_libtpu_without_tpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None or tpu_attached(), reason="needs libtpu installed on a host with no TPU"
)


@needs_libtpu_without_tpu
def test_train_on_a_host_without_tpu_prints_nothing_from_libtpu(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TINY.read_text()[:20_000])
    cache = tmp_path / "xla"
    overrides = [*SMALL, f"data.inputs=[{text}]", f"data.path={tmp_path / 'data'}", f"train.out_dir={tmp_path / 'run'}"]
    proc = subprocess.run(
        [sys.executable, "-m", "jaxllm.cli", "train", "shakespeare-char-cpu", "train.steps=1", *overrides],
        env=_env_without_platforms(**{CACHE_ENV: str(cache)}), cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    noise = [line for line in proc.stderr.splitlines() if LIBTPU_NOISE.search(line)]
    assert not noise, proc.stderr
    assert "step 1/1" in proc.stdout
    assert any(cache.iterdir()), "the CLI wrote no compiled program to JAXLLM_COMPILATION_CACHE"


@needs_libtpu_without_tpu
def test_importing_jaxllm_keeps_jax_from_starting_libtpu():
    code = "import jaxllm, jax; from jax._src import xla_bridge as xb; jax.devices(); print(xb._backend_errors['tpu'])"
    proc = _python(code, _env_without_platforms())
    assert proc.returncode == 0, proc.stderr
    assert "no TPU is attached" in proc.stdout and not LIBTPU_NOISE.search(proc.stderr), proc.stdout + proc.stderr


def test_an_explicit_platform_is_left_to_jax():
    code = "import jaxllm; from jax._src import xla_bridge as xb; print(xb._backend_factories['tpu'].factory)"
    proc = _python(code, {**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    assert "_no_tpu" not in proc.stdout


@pytest.mark.parametrize("value", ["0", "off", "OFF", "false", "no", "none"])
def test_cache_off(value):
    assert compilation_cache_dir({CACHE_ENV: value}) is None


def test_cache_folder(tmp_path):
    assert compilation_cache_dir({CACHE_ENV: str(tmp_path / "c")}) == tmp_path / "c"
    assert compilation_cache_dir({CACHE_ENV: "~/c"}) == Path.home() / "c"
    assert compilation_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "jaxllm" / "xla"
    default = Path.home() / ".cache" / "jaxllm" / "xla"
    assert compilation_cache_dir({}) == compilation_cache_dir({"XDG_CACHE_HOME": "relative"}) == default
    assert compilation_cache_dir({CACHE_ENV: ""}) == default


def test_enable_compilation_cache_in_a_fresh_process(tmp_path):
    code = ("import jax; from jaxllm.host import enable_compilation_cache as e; print(e());"
            "print(jax.config.jax_persistent_cache_min_compile_time_secs); jax.jit(lambda x: x + 1)(1.0)")  # fmt: skip
    on = _python(code, {**os.environ, CACHE_ENV: str(tmp_path / "xla")})
    assert on.returncode == 0, on.stderr
    assert on.stdout.split() == [str(tmp_path / "xla"), "0.0"] and any((tmp_path / "xla").iterdir())
    off = _python(code, {**os.environ, CACHE_ENV: "off"})
    assert off.stdout.split() == ["None", "1.0"], off.stderr
    # jax's own setting wins over jaxllm's, and its thresholds are left alone
    env = {**os.environ, CACHE_ENV: str(tmp_path / "ours"), "JAX_COMPILATION_CACHE_DIR": str(tmp_path)}
    theirs = _python(code, env)
    assert theirs.stdout.split() == [str(tmp_path), "1.0"] and not (tmp_path / "ours").exists(), theirs.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")
    unwritable = _python(code, {**os.environ, CACHE_ENV: str(blocked / "xla")})
    assert unwritable.returncode == 0 and unwritable.stdout.split()[0] == "None", unwritable.stderr
