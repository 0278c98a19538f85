"""The `jaxllm` console entry point: in-process through `main([...])`, plus one real subprocess."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

from jaxllm.cli import main
from jaxllm.config import load_config, to_dict


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("shakespeare-char", []),
        ("gpt2-124m", ["model.num_layers=2", "optimizer.lr=3e-4", "data.inputs=[a.txt,b.txt]"]),
        ("llama-8b", ["model.rope_scaling.factor=16", "model.num_kv_heads=null", "train.steps=9"]),
    ],
)
def test_config_show_prints_loadable_yaml(capsys, tmp_path, preset, overrides):
    rc, out, err = _run(capsys, "config", "show", preset, *overrides)
    assert rc == 0
    assert err == ""
    expected = load_config(preset, overrides)
    raw = yaml.safe_load(out)
    assert isinstance(raw, dict)
    assert raw == to_dict(expected)
    path = tmp_path / "shown.yaml"
    path.write_text(out)
    assert load_config(path) == expected


def test_config_show_applies_overrides(capsys):
    rc, out, _ = _run(capsys, "config", "show", "gpt2-124m", "model.num_layers=3")
    assert rc == 0
    assert yaml.safe_load(out)["model"]["num_layers"] == 3
    _, plain, _ = _run(capsys, "config", "show", "gpt2-124m")
    assert yaml.safe_load(plain)["model"]["num_layers"] == 12


def test_config_show_accepts_a_yaml_path(capsys, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: shakespeare-char\nmodel:\n  num_layers: 2\n")
    rc, out, _ = _run(capsys, "config", "show", str(path))
    assert rc == 0
    assert yaml.safe_load(out) == to_dict(load_config("shakespeare-char", ["model.num_layers=2"]))


def test_model_summary_gpt2_124m(capsys):
    rc, out, err = _run(capsys, "model", "summary", "gpt2-124m")
    assert rc == 0
    assert err == ""
    total = [line for line in out.splitlines() if line.split()[:1] == ["total"]]
    assert total, out
    assert "124,439,808" in total[0]
    assert "memory" in out
    assert "AdamW" in out and "GiB" in out
    assert "seq_len 1024" in out  # FLOPs at data.seq_len by default


def test_model_summary_seq_len_flag(capsys):
    rc, out, _ = _run(capsys, "model", "summary", "shakespeare-char", "--seq-len", "128")
    assert rc == 0
    assert "seq_len 128" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["config", "show", "gpt2-124m", "model.num_heads=5"], "model.num_heads"),
        (["config", "show", "gpt2-999m"], "gpt2-999m"),
        (["config", "show", "gpt2-124m", "model.num_layer=3"], "model.num_layer"),
        (["config", "show", "gpt2-124m", "model.num_layers"], "model.num_layers"),
        (["model", "summary", "gpt2-124m", "mesh.tensor=5"], "mesh.tensor"),
        (["model", "summary", "gpt2-999m"], "gpt2-999m"),
    ],
    ids=["heads", "missing-preset", "unknown-key", "no-equals", "summary-mesh", "summary-missing-preset"],
)
def test_bad_config_exits_2_with_one_error_line(capsys, argv, needle):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jaxllm: error:"), err
    assert needle in lines[0]


def test_missing_verb_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


def _console_script():
    name = "jaxllm.exe" if sys.platform == "win32" else "jaxllm"
    beside = Path(sysconfig.get_path("scripts")) / name
    return str(beside) if beside.is_file() else shutil.which("jaxllm")


def test_installed_console_script(tmp_path):
    script = _console_script()
    assert script, "the `jaxllm` console script is not installed (pip install -e .)"
    proc = subprocess.run(
        [script, "config", "show", "shakespeare-char"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # presets are found from any directory
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout) == to_dict(load_config("shakespeare-char"))
