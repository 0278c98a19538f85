"""Metrics: JSONL + TensorBoard round trip, crash/resume safety, and the run plot."""

import json
import math
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

from jaxllm.train.metrics import (
    MetricsWriter,
    _crc32c,
    read_metrics,
    read_tensorboard_scalars,
)
from jaxllm.viz.curves import panels, plot_run


def _train(step):
    return {"loss": 4.0 / (1 + step), "lr": 3e-4 * step, "grad_norm": 1.0 + 0.1 * step, "tokens_per_s": 1e5 + step}


def _val(step):
    return {"loss": 5.0 / (1 + step), "perplexity": math.exp(5.0 / (1 + step))}


def test_round_trip_jsonl_and_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as mw:
        for step in range(5):
            mw.write(step, "train", _train(step))
            if step in (2, 4):
                mw.write(step, "val", _val(step))

    records = read_metrics(tmp_path)
    assert [(r["step"], r["split"]) for r in records] == [
        (0, "train"), (1, "train"), (2, "train"), (2, "val"), (3, "train"), (4, "train"), (4, "val"),
    ]  # fmt: skip
    for r in records:
        expected = _train(r["step"]) if r["split"] == "train" else _val(r["step"])
        assert {k: r[k] for k in expected} == expected  # JSON keeps float64 exactly
        assert isinstance(r["time"], float) and set(r) == {"step", "split", "time", *expected}

    scalars = read_tensorboard_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {f"train/{k}" for k in _train(0)} | {f"val/{k}" for k in _val(0)}
    for split, fn, steps in (("train", _train, range(5)), ("val", _val, (2, 4))):
        for name in fn(0):
            got = scalars[f"{split}/{name}"]
            assert [s for s, _ in got] == list(steps)
            np.testing.assert_array_equal([v for _, v in got], np.float32([fn(s)[name] for s in steps]))


def test_tensorboard_is_written_without_importing_torch(tmp_path):
    """A fresh process (this one has torch loaded by the parity tests) writes TensorBoard
    scalars, leaves torch unloaded, and can still import torch afterwards."""
    script = (
        "import sys\n"
        "from jaxllm.train.metrics import MetricsWriter, read_tensorboard_scalars\n"
        f"with MetricsWriter({str(tmp_path)!r}) as mw:\n"
        "    mw.write(1, 'train', {'loss': 2.5})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        f"assert read_tensorboard_scalars({str(tmp_path / 'tensorboard')!r})['train/loss'] == [(1, 2.5)]\n"
        "import torch\n"
        "print(torch.ones(2).sum().item())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "2.0"


def test_nonfinite_written_as_null(tmp_path):
    with MetricsWriter(tmp_path) as mw:
        mw.write(0, "train", {"loss": float("nan"), "grad_norm": float("inf"), "lr": np.float32(1e-3)})
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert "NaN" not in line and "Infinity" not in line
    rec = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert rec["loss"] is None and rec["grad_norm"] is None
    assert rec["lr"] == pytest.approx(1e-3)
    # TensorBoard gets the raw value: it shows NaN as a gap by itself.
    assert math.isnan(read_tensorboard_scalars(tmp_path / "tensorboard")["train/loss"][0][1])


def test_reopen_appends(tmp_path):
    with MetricsWriter(tmp_path) as mw:
        mw.write(0, "train", {"loss": 2.0})
    with MetricsWriter(tmp_path) as mw:  # same second: the TB event file must not be overwritten
        mw.write(1, "train", {"loss": 1.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(0, 2.0), (1, 1.0)]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert read_tensorboard_scalars(tmp_path / "tensorboard")["train/loss"] == [(0, 2.0), (1, 1.0)]


def test_truncated_last_line_tolerated(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as mw:
        for step in range(3):
            mw.write(step, "train", {"loss": float(step)})
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 3, "split": "train", "ti')  # killed mid-write
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a truncated *last* line is expected, so no warning
        assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]

    # Resuming after such a crash starts a fresh line instead of gluing onto the fragment;
    # the fragment is now mid-file, so it is skipped with a warning rather than silently.
    with MetricsWriter(tmp_path, tensorboard=False) as mw:
        mw.write(3, "train", {"loss": 3.0})
    with pytest.warns(UserWarning, match=r"metrics.jsonl:4: skipping malformed line"):
        records = read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in records] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]


def test_duplicate_steps_keep_last(tmp_path):
    with MetricsWriter(tmp_path) as mw:  # first run: steps 0..4, checkpoint at 2, then a crash
        for step in range(5):
            mw.write(step, "train", {"loss": 10.0 + step})
        mw.write(4, "val", {"loss": 99.0})
    with MetricsWriter(tmp_path) as mw:  # resumed from step 2: re-does 3 and 4
        for step in range(3, 6):
            mw.write(step, "train", {"loss": 20.0 + step})
        mw.write(4, "val", {"loss": 50.0})
    records = read_metrics(tmp_path)
    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
    assert train == [(0, 10.0), (1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0), (5, 25.0)]
    assert [(r["step"], r["loss"]) for r in records if r["split"] == "val"] == [(4, 50.0)]
    tb = read_tensorboard_scalars(tmp_path / "tensorboard")
    assert tb["train/loss"] == train and tb["val/loss"] == [(4, 50.0)]


def test_reserved_names_rejected(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as mw, pytest.raises(ValueError, match="reserved"):
        mw.write(0, "train", {"step": 1.0})


def test_crc32c_known_value():
    # The standard CRC-32C check value (RFC 3720 / iSCSI): crc32c(b"123456789") == 0xE3069283.
    assert _crc32c(b"123456789") == 0xE3069283


def _lr(step, peak=6e-4, warmup=50, total=500):
    """Warmup + cosine, the shape the trainers log."""
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def _synthetic_run(run_dir, *, val=True, mfu=True):
    """A pre-training / SFT run: loss, lr, tokens/s (+ MFU), val loss."""
    rng = np.random.default_rng(0)
    with MetricsWriter(run_dir, tensorboard=False) as mw:
        for step in range(0, 500, 5):
            loss = 2.5 + 8.0 * math.exp(-step / 80) + 0.15 * rng.standard_normal()
            values = {"loss": loss, "lr": _lr(step), "grad_norm": 1.0, "step_time_s": 0.3,
                      "tokens_per_s": 120_000 + 5_000 * rng.standard_normal()}  # fmt: skip
            if mfu:
                values["mfu"] = 0.42 + 0.02 * rng.standard_normal()
            mw.write(step, "train", values)
            if val and step % 100 == 0:
                mw.write(step, "val", {"loss": loss + 0.1, "perplexity": math.exp(loss + 0.1)})


def _dpo_run(run_dir):
    """A reward-model / DPO run: preference loss plus accuracy/margin, and a val_preference split."""
    with MetricsWriter(run_dir, tensorboard=False) as mw:
        for step in range(50, 301, 50):
            mw.write(step, "train", {"loss": 0.6 - step / 1000, "lr": _lr(step, 1e-5, 0, 300), "tokens_per_s": 9e3,
                                     "mfu": 0.13, "accuracy": 0.6 + step / 1000, "margin": step / 200,
                                     "reward_chosen": 0.1, "reward_rejected": -0.1})  # fmt: skip
        mw.write(300, "val", {"loss": 0.51, "perplexity": 1.67})
        mw.write(300, "val_preference", {"loss": 0.51, "accuracy": 0.79, "margin": 0.83})


def _ppo_run(run_dir):
    """A PPO run: no train loss; reward, kl, lr, iteration_s; val reward/kl; a critic_warmup split."""
    with MetricsWriter(run_dir, tensorboard=False) as mw:
        mw.write(0, "val", {"reward": 1.3, "kl": 0.0})
        mw.write(0, "critic_warmup", {"rollout": 1.0, "value_loss": 0.3})
        for i in range(1, 41):
            step = 16 * i
            mw.write(step, "train", {"reward": 1.3 + i / 40, "kl": i / 200, "policy_loss": -0.02, "value_loss": 0.25,
                                     "lr": _lr(step, 2e-5, 0, 640), "iteration_s": 8.0, "rollout_s": 0.5})  # fmt: skip
            if i % 4 == 0:
                mw.write(step, "val", {"reward": 1.3 + i / 50, "kl": i / 220})


def _loss_only_run(run_dir):
    with MetricsWriter(run_dir, tensorboard=False) as mw:
        for step in range(3):
            mw.write(step, "train", {"loss": 3.0 - step})


RUNS = {
    "pretrain": (_synthetic_run, ["loss", "lr", "throughput"]),
    "dpo": (_dpo_run, ["loss", "preference", "lr", "throughput"]),
    "ppo": (_ppo_run, ["reward", "kl", "lr", "iteration_s"]),
    "loss_only": (_loss_only_run, ["loss"]),
}
# The y labels of each panel (left axis), and of the twin axes on the right, top to bottom.
YLABELS = {
    "pretrain": (["loss", "learning rate", "tokens / s"], ["MFU (%)"]),
    "dpo": (["loss", "accuracy", "learning rate", "tokens / s"], ["margin", "MFU (%)"]),
    "ppo": (["reward", "KL to reference", "learning rate", "s / iteration"], []),
    "loss_only": (["loss"], []),
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
        return im.size


@pytest.mark.parametrize("val,mfu", [(True, True), (False, False)])
def test_plot_run_writes_png(tmp_path, val, mfu):
    _synthetic_run(tmp_path, val=val, mfu=mfu)
    out = plot_run(tmp_path)
    assert out == tmp_path / "metrics.png"
    data = out.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000
    assert _png_size(out) == (1200, 3 * 312)  # 10 x 2.6 inches per panel at 120 dpi

    custom = plot_run(tmp_path, tmp_path / "sub" / "custom.png")
    assert custom.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("kind", list(RUNS))
def test_plot_panels_follow_what_was_logged(tmp_path, kind):
    make, expected = RUNS[kind]
    make(tmp_path)
    assert panels(read_metrics(tmp_path)) == expected


def test_plot_panels_edge_cases():
    assert panels([{"step": 0, "split": "val", "loss": 1.0}]) == ["loss"]  # no train keys: the loss panel alone
    train = {"step": 0, "split": "train"}
    # A run that logs both a loss and a reward keeps the loss panel; tokens/s wins over iteration_s.
    assert panels([{**train, "loss": 1.0, "reward": 2.0, "tokens_per_s": 1.0, "iteration_s": 3.0}]) == [
        "loss", "throughput",
    ]  # fmt: skip
    # Keys of val records never add panels: only train records say what kind of run this is.
    assert panels([{**train, "loss": 1.0}, {"step": 0, "split": "val", "kl": 0.1, "accuracy": 0.5}]) == ["loss"]


@pytest.mark.parametrize("kind", list(RUNS))
def test_plot_run_draws_one_panel_per_logged_group(tmp_path, monkeypatch, kind):
    import jaxllm.viz.curves as plot_module

    make, expected = RUNS[kind]
    make(tmp_path)
    figures, close = [], plot_module.plt.close
    monkeypatch.setattr(plot_module.plt, "close", figures.append)  # keep the figure to look inside it
    out = plot_run(tmp_path, tmp_path / f"{kind}.png")
    (fig,) = figures
    try:
        assert _png_size(out) == (1200, 312 * len(expected))
        main = [ax for ax in fig.axes if ax.yaxis.get_label_position() == "left"]
        twins = [ax for ax in fig.axes if ax.yaxis.get_label_position() == "right"]
        left, right = YLABELS[kind]
        assert [ax.get_ylabel() for ax in main] == left
        assert [ax.get_ylabel() for ax in twins] == right
        assert all(ax.get_shared_x_axes().joined(main[0], ax) for ax in main[1:])
        assert [ax.get_xlabel() for ax in main] == [""] * (len(main) - 1) + ["step"]

        records = read_metrics(tmp_path)
        by_name = dict(zip(expected, main, strict=True))

        def ydata(ax, label_start):
            (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(label_start)]
            return list(line.get_ydata())

        def logged(split, key):
            return [r[key] for r in records if r["split"] == split and key in r]

        if "lr" in by_name:
            ax = by_name["lr"]
            assert ydata(ax, "lr (peak") == pytest.approx(logged("train", "lr"))
            assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
            assert ax.yaxis.get_major_formatter()(6e-4, 0) == "6e-4"
            assert ax.yaxis.get_major_formatter()(1.25e-5, 0) == "1.25e-5"
        if kind == "ppo":
            assert ydata(by_name["reward"], "train reward") == pytest.approx(logged("train", "reward"))
            assert ydata(by_name["reward"], "val reward") == pytest.approx(logged("val", "reward"))
            assert ydata(by_name["kl"], "val kl") == pytest.approx(logged("val", "kl"))
            assert ydata(by_name["iteration_s"], "s / iteration") == pytest.approx(logged("train", "iteration_s"))
        if kind == "dpo":
            ax = by_name["preference"]
            assert ydata(ax, "train accuracy") == pytest.approx(logged("train", "accuracy"))
            assert ydata(ax, "held-out accuracy (last 0.79") == pytest.approx([0.79])  # from split val_preference
            assert ax.get_ylim() == pytest.approx((0, 1.05))
            assert ydata(twins[0], "train margin") == pytest.approx(logged("train", "margin"))
        if kind == "pretrain":
            assert ydata(by_name["loss"], "train loss (last ") == pytest.approx(logged("train", "loss"))
            assert ydata(by_name["loss"], "val loss") == pytest.approx(logged("val", "loss"))
    finally:
        close(fig)


def test_plot_run_errors_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"no metrics.jsonl in run dir {tmp_path}")):
        plot_run(tmp_path)
    with MetricsWriter(tmp_path, tensorboard=False) as mw:
        mw.write(0, "val", {"loss": 3.0})
    with pytest.raises(ValueError, match="no train points"):
        plot_run(tmp_path)


def test_the_lr_panel_draws_the_whole_schedule_from_the_runs_config(tmp_path):
    """Logged every 100 steps, a 100-step warmup would be invisible; the config's schedule
    is drawn in full when it agrees with every logged value, and not otherwise."""
    import yaml

    from jaxllm.config import OptimizerConfig
    from jaxllm.train.optimizer import lr_schedule
    from jaxllm.viz.curves import lr_curve

    opt = {"lr": 1e-3, "min_lr_ratio": 0.1, "warmup_steps": 100, "decay_steps": 1000}
    schedule = lr_schedule(OptimizerConfig(**opt))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"optimizer": opt}))
    records = [{"split": "train", "step": s, "lr": float(schedule(s - 1)), "loss": 1.0} for s in range(100, 1001, 100)]
    steps, values = lr_curve(tmp_path, records)
    assert steps[0] == 1 and steps[-1] == 1000 and len(steps) == 1000
    assert values[0] == pytest.approx(0.0) and values[100] == pytest.approx(1e-3, rel=1e-5)
    assert values[-1] == pytest.approx(1e-4, rel=1e-3)
    assert values[49] == pytest.approx(5e-4, rel=0.03)  # mid-warmup: what the logged points cannot show
    records[3]["lr"] *= 1.5  # a run whose lr did not follow its config
    assert lr_curve(tmp_path, records) is None
    assert lr_curve(tmp_path / "missing", records) is None
