"""The quickstart end to end (short), and the train / sample / plot / config-show verbs."""

from __future__ import annotations

import io
from pathlib import Path

import yaml

import jaxllm
from jaxllm.cli import main
from jaxllm.quickstart import recipe_overrides
from jaxllm.train.metrics import read_metrics
from tests.fixtures import copy_run
from tests.guide_runs import ran_chapter


def test_quickstart_runs_the_whole_path(tmp_path_factory, tmp_path, capsys, monkeypatch):
    """`jaxllm quickstart` as the guide's chapter 0 runs it (tests/guide_runs.py: 8 steps, on
    one device), read from the chapter's log and folders, then the sample / chat / plot verbs
    on a copy of its run."""
    main_dir = ran_chapter(tmp_path_factory, "00")
    text = (main_dir.parent / "chapter.log").read_text(errors="replace").split("\n$ ")[0]  # the quickstart's lines
    for stage in ("1/5 fetch", "2/5 train a character-level tokenizer", "3/5 prepare", "4/5 train", "5/5 sample"):
        assert stage in text
    root = main_dir / "runs" / "quickstart"
    assert (root / "corpus/tinyshakespeare.txt").stat().st_size == 1_115_394
    assert (root / "tokenizer/char.model").exists() and (root / "data/manifest.json").exists()
    assert "jaxllm plot" in text and str(root / "run") in text
    sample_block = text.split("-" * 60)[1]
    assert len(sample_block.strip()) > 50  # 400 sampled characters, decoded
    run = copy_run(root / "run", tmp_path / "run")  # the guide's later chapters read the original
    # train.log_every=4 from the guide's JAXLLM_OVERRIDES (tests/guide_runs.py SMALL)
    assert sorted(r["step"] for r in read_metrics(run) if r["split"] == "train") == [4, 8]

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


def test_a_shorter_quickstart_still_logs_four_times_and_fills_every_device():
    overrides, note = recipe_overrides(Path("q"), Path("q/corpus/t.txt"), steps=8, devices=8)
    cfg = jaxllm.load_config("shakespeare-char-cpu", overrides)
    assert (cfg.train.steps, cfg.train.log_every, cfg.train.eval_every) == (8, 2, 2)  # every 8 // 4
    assert cfg.train.batch_size == 16 and "rounded up to 16" in note  # 12 does not split over 8 devices
    assert (cfg.train.out_dir, cfg.data.path) == ("q/run", "q/data")
    overrides, note = recipe_overrides(Path("q"), Path("t.txt"), steps=None, devices=4)
    cfg = jaxllm.load_config("shakespeare-char-cpu", overrides)
    assert note is None and cfg.train.batch_size == 12 and cfg.train.steps == 2000  # the recipe as it is


def test_train_without_data_inputs_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "shakespeare-char-cpu", f"data.path={tmp_path}/none", f"tokenizer.path={tmp_path}/t.model",
                 "data.inputs=[]", f"train.out_dir={tmp_path}/run"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.inputs is empty" in err[0]


def test_config_show_lists_every_parameter_sharding(capsys):
    assert main(["config", "show", "gpt2-124m", "mesh.tensor=2", "model.num_layers=2"]) == 0
    out = capsys.readouterr().out
    spec = "P('pipeline', ('fsdp', 'context'), 'tensor')"  # layers -> pipeline, embed -> fsdp + context
    assert "#   blocks.mlp.up_proj.kernel" in out and spec in out
    assert "#   wte.embedding" in out
    assert jaxllm.config.from_dict(yaml.safe_load(out)) == jaxllm.load_config(
        "gpt2-124m", ["mesh.tensor=2", "model.num_layers=2"]
    )  # the sharding table is YAML comments: the output still loads as the same config
    assert main(["config", "show", "gpt2-124m", "mesh.rules=[embed=]", "model.num_layers=2"]) == 0
    assert "P('pipeline', None, 'tensor')" in capsys.readouterr().out  # embed no longer split: plain DP
