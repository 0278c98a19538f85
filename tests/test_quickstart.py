"""The quickstart end to end (short), and the train / sample / plot / config-show verbs."""

from __future__ import annotations

import io

import yaml

import jaxllm
from jaxllm.cli import main
from jaxllm.config import OVERRIDES_ENV
from jaxllm.quickstart import quickstart
from jaxllm.train.metrics import read_metrics
from tests.data_paths import SHARED_DATA


def test_quickstart_runs_the_whole_path(tmp_path, capsys, monkeypatch):
    # Evaluation on 2 batches, not the recipe's 20: at 8 steps with an evaluation every 2
    # the recipe would spend more on validation batches than on training ones.
    monkeypatch.setenv(OVERRIDES_ENV, "train.eval_batches=2")
    lines: list[str] = []
    run = quickstart(str(tmp_path / "qs"), steps=8, from_dir=str(SHARED_DATA), log=lines.append)
    text = "\n".join(lines)
    for stage in ("1/5 fetch", "2/5 train a character-level tokenizer", "3/5 prepare", "4/5 train", "5/5 sample"):
        assert stage in text
    assert (tmp_path / "qs/corpus/tinyshakespeare.txt").stat().st_size == 1_115_394
    assert (tmp_path / "qs/tokenizer/char.model").exists() and (tmp_path / "qs/data/manifest.json").exists()
    assert sorted(r["step"] for r in read_metrics(run) if r["split"] == "train") == list(range(2, 9, 2))  # every 8 // 4
    assert "jaxllm plot" in text and str(run) in text
    sample_block = text.split("-" * 60)[1]
    assert len(sample_block.strip()) > 50  # 400 sampled characters, decoded

    # the same run through the CLI verbs
    assert main(["sample", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out) > len("ROMEO:") + 10
    assert main(["sample", str(run), "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "80",
                 "--num-samples", "2", "--stop", "\n\n"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    samples = out.split("----- sample ")[1:]
    assert len(samples) == 2 and samples[0][4:].rstrip() == samples[1][4:].rstrip()  # greedy: the two agree
    assert "\n\n" not in samples[0].split("ROMEO:", 1)[1].rstrip("\n")  # cut at the stop string
    assert main(["sample", str(run), "--top-p", "1.5"]) == 2
    err = capsys.readouterr().err  # one line naming the bad value and the allowed range
    assert err.count("\n") == 1 and "1.5" in err and "(0, 1]" in err

    monkeypatch.setattr("sys.stdin", io.StringIO("Good morrow\n/reset\nWhat news?\n/exit\nnever read\n"))
    assert main(["chat", str(run), "--max-new-tokens", "20", "--system", "Speak as a king."]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("assistant> ") == 2 and "(history cleared)" in captured.out
    assert "not instruction-tuned" in captured.err
    assert main(["chat", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["plot", str(run)]) == 0
    png = run / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sample", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_train_without_data_inputs_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "shakespeare-char-cpu", f"data.path={tmp_path}/none", f"tokenizer.path={tmp_path}/t.model",
                 "data.inputs=[]", f"train.out_dir={tmp_path}/run"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.inputs is empty" in err[0]


def test_config_show_lists_every_parameter_sharding(capsys):
    assert main(["config", "show", "gpt2-124m", "mesh.tensor=2", "model.num_layers=2"]) == 0
    out = capsys.readouterr().out
    assert "#   blocks.mlp.up_proj.kernel" in out and "P('pipeline', 'fsdp', 'tensor')" in out  # layers -> pipeline
    assert "#   wte.embedding" in out
    assert jaxllm.config.from_dict(yaml.safe_load(out)) == jaxllm.load_config(
        "gpt2-124m", ["mesh.tensor=2", "model.num_layers=2"]
    )  # the sharding table is YAML comments: the output still loads as the same config
    assert main(["config", "show", "gpt2-124m", "mesh.rules=[embed=]", "model.num_layers=2"]) == 0
    assert "P('pipeline', None, 'tensor')" in capsys.readouterr().out  # embed no longer split: plain DP
