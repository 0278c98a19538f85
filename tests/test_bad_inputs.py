"""Every verb, given a bad input, says so in one line on stderr and exits 2 (never a traceback).

The table below is the contract: each row is a command line (placeholders in braces name the
inputs built once by the `inputs` fixture), the exit code, and a piece of the one stderr line,
normally the bad value itself, so the user can tell which of their inputs is wrong. Adding a
case is adding a row. Rows run in-process through `jaxllm.cli.main` (a subprocess costs seconds
of jax import each); two subprocess tests cover what only a real process shows: Ctrl-C, and
`--debug` printing the traceback.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxllm.cli import describe, main
from jaxllm.config import Config, ConfigError, apply_overrides, from_dict, load_config, save_config, to_dict
from jaxllm.model.api import param_shapes
from jaxllm.train.load import write_run
from tests.data_paths import TINY

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = ["model.vocab_size=256", "model.max_seq_len=32", "model.d_model=32", "model.num_layers=2",
            "model.num_heads=2", "model.dropout=0.0", "data.seq_len=32", "tokenizer.path=byte"]  # fmt: skip
ALPACA = {"instruction": "Reverse the word.", "input": "stop", "output": "pots"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """{trained}: a tiny run with a checkpoint, for the few rows that get as far as its weights.
    Constant weights: nothing is scored, and random ones would cost seconds of compilation."""
    cfg = load_config("shakespeare-char-cpu", TINY_RUN)
    params = jax.tree.map(lambda s: np.full(s.shape, 0.01, s.dtype), param_shapes(cfg.model))
    return str(write_run(cfg, params, tmp_path_factory.mktemp("bad_inputs_run") / "run"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, str]:
    """{dataset}: a byte-level dataset prepared from {dtext}, for the rows that reach training."""
    from jaxllm.data.prepare import prepare

    root = tmp_path_factory.mktemp("bad_inputs_data")
    (root / "text.txt").write_text(TINY.read_text(encoding="utf-8")[:20_000])
    cfg = load_config("shakespeare-char-cpu", [*TINY_RUN, f"data.inputs=[{root}/text.txt]", f"data.path={root}/data"])
    prepare(cfg, log=lambda _: None)
    return {"dataset": str(root / "data"), "dtext": str(root / "text.txt")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Paths the rows refer to as {name}. {run} holds only a run's config.yaml: the rows that
    use it fail before any weights are read (writing a checkpoint costs seconds)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    run = root / "run"
    run.mkdir()
    save_config(load_config("shakespeare-char-cpu", TINY_RUN), run / "config.yaml")
    files = {  # {placeholder}: (path under root, bytes); a path in a folder names the folder
        "binary": ("binary.txt", b"\xff\xfe\x00binary\x80\x81\n"),
        "binary-jsonl": ("binary.jsonl", b'{"instruction": "\xff\xfe", "output": "x"}\n'),
        "text": ("text.txt", b"To be, or not to be, that is the question.\n"),
        "alpaca": ("alpaca.jsonl", (json.dumps(ALPACA) + "\n").encode()),
        "not-json": ("not-json.jsonl", b'{"instruction": "a", "output": "b"}\n{oops\n'),
        "mc": ("mc.jsonl", b'{"context": "To be", "choices": [" or", " and"], "label": 5}\n'),
        "table": ("table.csv", b"a,b\n1,2\n"),
        "bad-yaml": ("bad.yaml", b"base: shakespeare-char\nmodel:\n  num_layers: [2\n"),
        "tabs-yaml": ("tabs.yaml", b"model:\n\tnum_layers: 2\n"),
        "latin1-yaml": ("latin1.yaml", b"# caf\xe9\nbase: shakespeare-char\n"),
        "garbage": ("garbage/metrics.jsonl", b"\x00\xff\xfegarbage\nnot a record\n"),
        "val-only": ("val-only/metrics.jsonl", b'{"step": 0, "split": "val", "loss": 3.0}\n'),
        "hf-garbage": ("hf-garbage/config.json", b"{not json"),
        "a-file": ("a-file", b"I am a file, not a directory\n"),
        "notes": ("notes/notes.txt", b"the user's own notes, not a dataset\n"),
        "bad-manifest": ("bad-manifest/manifest.json", b"{not json"),
    }
    paths = {}
    for key, (name, data) in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        paths[key] = str(root / Path(name).parts[0])
    for folder in ("no-metrics", "empty-dir"):
        (root / folder).mkdir()
        paths[folder] = str(root / folder)
    return {**paths, "run": str(run), "root": str(root), "missing": str(root / "missing"), "tiny": str(TINY)}


# (command line with {placeholders}, exit code, text the one stderr line must contain)
ROWS = [
    # config show / model summary: config values and files
    ("config show shakespeare-char optimizer.lr=inf", 2, "optimizer.lr=inf"),
    ("config show shakespeare-char optimizer.lr=nan", 2, "optimizer.lr=nan"),
    ("config show shakespeare-char model.dropout=.inf", 2, "model.dropout=inf"),
    ("config show shakespeare-char train.steps=-5", 2, "train.steps=-5"),
    ("config show shakespeare-char model.num_layers=two", 2, "model.num_layers='two'"),
    ("config show shakespeare-char model.num_layer=2", 2, "model.num_layer"),
    ("config show no-such-preset", 2, "no-such-preset"),
    ("config show {bad-yaml}", 2, "bad.yaml:4:1"),
    ("config show {tabs-yaml}", 2, "tabs.yaml:2:1"),
    ("config show {latin1-yaml}", 2, "latin1.yaml: not UTF-8"),
    ("config show shakespeare-char --bogus", 2, "--bogus"),
    ("model summary shakespeare-char --seq-len -4", 2, "--seq-len -4"),
    ("model summary shakespeare-char --seq-len 1e3", 2, "--seq-len 1e3"),
    # data and tokenizer
    ("data fetch no-such-corpus --out {missing}", 2, "no-such-corpus"),
    ("data synthetic instructions --n 0 --out {missing}", 2, "--n 0"),
    ("data synthetic instructions --n 5 --kinds divide --out {missing}", 2, "divide"),
    ("data synthetic preferences --n 5 --off-task 1.5 --out {missing}", 2, "--off-task 1.5"),
    ("data synthetic cloze --n 5 --file {binary} --out {missing}", 2, "binary.txt"),
    ("data prepare shakespeare-char data.val_fraction=2", 2, "data.val_fraction=2"),
    ("tokenizer decode 999", 2, "999"),
    ("tokenizer decode -1", 2, "-1"),
    ("tokenizer decode abc", 2, "abc"),
    ("tokenizer encode --tokenizer {missing} hello", 2, "missing"),
    ("tokenizer compare --file {binary} --vocab-sizes 512", 2, "binary.txt"),
    ("tokenizer compare --file {text} --vocab-sizes 512 --heldout 1.5", 2, "--heldout 1.5"),
    ("data prepare shakespeare-char tokenizer.path=byte data.path={a-file}", 2, "a-file"),
    ("data prepare shakespeare-char tokenizer.path=byte data.path={notes}", 2, "notes"),
    ("data prepare shakespeare-char tokenizer.path=byte data.inputs=[{text}] data.path={notes}", 2, "notes"),
    ("train shakespeare-char tokenizer.path=byte data.path={bad-manifest}", 2, "manifest.json"),
    # train (the training loop's own cases live in tests/test_train.py and tests/test_run_folder.py)
    ("train shakespeare-char-cpu " + " ".join(TINY_RUN) + " data.path={dataset} data.inputs=[{dtext}] "
     "train.out_dir={a-file}", 2, "a-file"),
    ("train shakespeare-char-cpu " + " ".join(TINY_RUN) + " data.path={dataset} data.inputs=[{text}] "
     "train.out_dir={missing}", 2, "text.txt"),
    ("train shakespeare-char-cpu " + " ".join(TINY_RUN) + " data.path={dataset} data.inputs=[{dtext}] "
     "train.out_dir={trained} train.batch_size=8 model.num_layers=1", 2, "model.num_layers: 2 -> 1"),
    ("train shakespeare-char train.steps=0", 2, "train.steps=0"),
    ("train shakespeare-char optimizer.lr=-1", 2, "optimizer.lr=-1"),
    ("train shakespeare-char --num-processes 0", 2, "--num-processes 0"),
    ("quickstart --steps 0", 2, "--steps 0"),
    # sample and chat: sampling settings
    ("sample {run} --top-k -3", 2, "--top-k -3"),
    ("sample {run} --max-new-tokens 0", 2, "--max-new-tokens 0"),
    ("sample {run} --max-new-tokens -5", 2, "--max-new-tokens -5"),
    ("sample {run} --top-p 1.5", 2, "--top-p 1.5"),
    ("sample {run} --top-p 0", 2, "--top-p 0"),
    ("sample {run} --temperature -1", 2, "--temperature -1"),
    ("sample {run} --temperature nan", 2, "--temperature nan"),
    ("sample {run} --min-p 2", 2, "--min-p 2"),
    ("sample {run} --repetition-penalty 0", 2, "--repetition-penalty 0"),
    ("sample {run} --num-samples 0", 2, "--num-samples 0"),
    ("chat {run} --max-new-tokens 0", 2, "--max-new-tokens 0"),
    ("chat {run} --temperature inf", 2, "--temperature inf"),
    # eval
    ("eval perplexity {run} --data {text} --stride 0", 2, "--stride 0"),
    ("eval perplexity {trained} --data {text} --stride 999", 2, "stride 999"),
    ("eval perplexity {run} --data {text} --batch-size 0", 2, "--batch-size 0"),
    ("eval perplexity {run} --data {binary}", 2, "binary.txt"),
    ("eval perplexity {run} --data {table}", 2, ".csv"),
    ("eval perplexity {run} --data {empty-dir}", 2, "empty-dir"),
    ("eval mc {run} --data {mc} --batch-size 0", 2, "--batch-size 0"),
    ("eval mc {run} --data {mc} --limit -1", 2, "--limit -1"),
    ("eval mc {run} --data {mc}", 2, "label 5"),
    ("eval mc {run} --data {binary-jsonl}", 2, "binary.jsonl"),
    ("eval exact-match {run} --data {alpaca} --batch-size 0", 2, "--batch-size 0"),
    ("eval exact-match {run} --data {mc}", 2, "'output'"),
    ("eval exact-match {run} --data {not-json}", 2, "not-json.jsonl:2"),
    ("eval harness --model jaxllm --model_args batch_size=4 --tasks hellaswag", 2, "batch_size=4"),
    # post-training
    ("sft {run} posttrain.data={binary-jsonl} train.steps=1", 2, "binary.jsonl"),
    ("sft {run} posttrain.data={not-json} train.steps=1", 2, "not-json.jsonl:2"),
    ("dpo {run} posttrain.beta=0", 2, "posttrain.beta=0"),
    ("reward {run} posttrain.val_fraction=1.5", 2, "posttrain.val_fraction=1.5"),
    ("ppo {run} ppo.gamma=2", 2, "ppo.gamma=2"),
    # convert
    ("convert from-hf {missing} {missing}", 2, "missing"),
    ("convert from-hf {hf-garbage} {missing}", 2, "config.json"),
    ("convert to-hf {run} {a-file}", 2, "a-file"),
    ("convert to-hf {run} {missing} --max-shard-mb 0", 2, "--max-shard-mb 0"),
    # plan, plot, viz
    ("plan shakespeare-char --topology cpu:1 --hbm-gib -1", 2, "--hbm-gib -1"),
    ("plan shakespeare-char --topology cpu:1 --slices 0", 2, "--slices 0"),
    ("plan shakespeare-char --topology v9-8", 2, "v9"),
    ("plot {no-metrics}", 2, "no-metrics"),
    ("plot {garbage}", 2, "garbage/metrics.jsonl"),
    ("plot {val-only}", 2, "no train points"),
    ("viz attention {trained} --prompt hello --head 9", 2, "head 9"),
    ("viz attention {run} --prompt hello --layer -1", 2, "--layer -1"),
    ("viz tokens --tokenizer byte --file {binary}", 2, "binary.txt"),
    ("viz tokens --tokenizer byte --text hello --width 0", 2, "--width 0"),
    ("viz mesh shakespeare-char --param no.such.param", 2, "no.such.param"),
    ("viz mesh shakespeare-char --devices 0", 2, "--devices 0"),
]


def _float_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every float field of the config tree."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _float_keys(hints[f.name], f"{prefix}{f.name}.")
        elif hints[f.name] is float:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_every_float_config_field_refuses_non_finite_numbers():
    """inf passes range checks such as `lr > 0` and nan fails them with a misleading message:
    every float of the config tree must refuse both, naming its key."""
    keys = _float_keys(Config)
    assert len(keys) > 20 and {"optimizer.lr", "model.rope_scaling.factor", "ppo.gamma"} <= set(keys)
    raw = to_dict(load_config("llama-8b"))  # parsed once: from_dict is what load_config ends with
    for key in keys:
        for text, shown in ((".inf", "inf"), ("nan", "nan"), ("-inf", "-inf")):
            with pytest.raises(ConfigError) as info:
                from_dict(apply_overrides(copy.deepcopy(raw), [f"{key}={text}"]))
            assert f"{key}={shown} must be a finite number" in str(info.value)


def test_the_library_refuses_what_the_cli_refuses():
    from jaxllm.model.summary import summary_table
    from jaxllm.plan import get_topology, plan

    cfg = load_config("shakespeare-char")
    with pytest.raises(ConfigError, match="seq_len=-4"):
        summary_table(cfg, -4)
    for bad in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=f"hbm_bytes={bad}"):
            plan(cfg, get_topology("cpu:1"), hbm_bytes=bad)


def run_cli(argv: list[str], capfd) -> tuple[int, str, str]:
    """main(argv)'s exit code (a usage error's SystemExit included) and what it printed."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line(err: str, out: str, needle: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"stderr is not one line:\n{err}"
    assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert "Traceback" not in err + out


@pytest.mark.parametrize(("command", "code", "needle"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_one_line(command, code, needle, inputs, capfd, monkeypatch, request):
    monkeypatch.delenv("JAXLLM_DEBUG", raising=False)
    monkeypatch.delenv("JAXLLM_OVERRIDES", raising=False)
    if "{trained}" in command:
        inputs = {**inputs, "trained": request.getfixturevalue("trained")}
    if "{dataset}" in command:
        inputs = {**inputs, **request.getfixturevalue("dataset")}
    argv = [word.format(**inputs) for word in shlex.split(command)]
    got, out, err = run_cli(argv, capfd)
    assert got == code, f"exit {got}, not {code}; stderr:\n{err}"
    assert_one_line(err, out, needle)


def test_an_unexpected_error_is_one_line_naming_its_type(monkeypatch, capfd):
    monkeypatch.delenv("JAXLLM_DEBUG", raising=False)

    def broken(args):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(describe, "_config_show", broken)
    code, out, err = run_cli(["config", "show", "shakespeare-char"], capfd)
    assert code == 2
    assert_one_line(err, out, "RuntimeError: disk on fire second line")
    assert "--debug" in err and "JAXLLM_DEBUG=1" in err


@pytest.mark.parametrize("how", ["flag", "flag-after-verb", "env"])
def test_debug_reraises(how, monkeypatch, capfd):
    monkeypatch.delenv("JAXLLM_DEBUG", raising=False)
    argv = ["config", "show", "shakespeare-char", "train.steps=-5"]
    if how == "flag":
        argv = ["--debug", *argv]
    elif how == "flag-after-verb":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("JAXLLM_DEBUG", "1")
    with pytest.raises(ValueError, match="train.steps=-5"):
        main(argv)


def test_ctrl_c_anywhere_in_main_exits_130_with_one_line(monkeypatch, capfd):
    monkeypatch.delenv("JAXLLM_DEBUG", raising=False)

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(describe, "_model_summary", interrupted)
    code, out, err = run_cli(["model", "summary", "shakespeare-char"], capfd)
    assert code == 130
    assert_one_line(err, out, "interrupted")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAXLLM_DEBUG", "JAXLLM_OVERRIDES")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_ctrl_c_while_compiling_exits_130_with_one_line(inputs, trained):
    """SIGINT once the run is loaded and generation is compiling: exit 130, one line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "jaxllm.cli", "sample", trained, "--max-new-tokens", "30000", "--prompt", "To"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(), cwd=inputs["root"],
    )  # fmt: skip
    try:
        for line in proc.stderr:  # library log lines may come first; "# RUN step 0": loaded, compiling next
            if line.startswith("# "):
                break
        else:
            pytest.fail(f"sample ended before loading the run (exit {proc.wait()})")
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert code == 130, rest
    assert rest.splitlines() == ["jaxllm: interrupted (Ctrl-C)"], rest


@pytest.mark.parametrize("delay", [0.3, 0.8])
def test_ctrl_c_while_starting_up_exits_130_without_a_traceback(inputs, delay):
    """SIGINT while Python imports jax (before `cli.main` runs): exit 130 and at most the one
    line, not an import traceback (jaxllm/host.py, quiet_startup_interrupts)."""
    proc = subprocess.Popen([sys.executable, "-m", "jaxllm.cli", "config", "show", "shakespeare-char"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=inputs["root"])
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # the command finished before the signal: nothing to test at this delay
        pytest.skip(f"config show finished within {delay} s")
    assert proc.returncode == 130, err
    assert err.splitlines() in ([], ["jaxllm: interrupted (Ctrl-C)"]), err


def test_debug_flag_shows_the_traceback(inputs):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxllm.cli", "--debug", "viz", "tokens", "--tokenizer", "byte", "--file",
         inputs["binary"]],
        capture_output=True, text=True, env=_env(), cwd=inputs["root"], timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "DataError: --file" in proc.stderr and "binary.txt: not UTF-8" in proc.stderr
