"""One picture of a run: loss curves on top, throughput (and MFU) below.

Why a PNG and not only TensorBoard: a PNG can be written at the end of a run (or from a
finished run dir, any time later), attached to a report, and looked at without a server.
It reads only metrics.jsonl via `read_metrics`, so it shows exactly what the record holds,
with resumed steps already de-duplicated.

Metric names it knows (anything missing is simply left out of the plot):
    train: loss, tokens_per_s, mfu (fraction 0..1)
    val:   loss
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: training machines have no display; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

from jaxllm.train.metrics import METRICS_FILE, read_metrics  # noqa: E402


def _series(records: list[dict[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` in `split`; null (non-finite) values become NaN, which pyplot draws as a gap."""
    steps, values = [], []
    for r in records:
        if r.get("split") == split and key in r:
            steps.append(r["step"])
            values.append(math.nan if r[key] is None else float(r[key]))
    return steps, values


def _last_finite(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return finite[-1] if finite else None


def _no_data(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot the run in `run_dir` to `out` (default RUN_DIR/metrics.png) and return the PNG's path.

    Raises FileNotFoundError if the run has no metrics.jsonl, ValueError if it has no train records.
    """
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in run dir {run_dir}: nothing to plot")
    records = read_metrics(run_dir)
    if not any(r.get("split") == "train" for r in records):
        raise ValueError(f"{run_dir / METRICS_FILE} holds no train points: nothing to plot")
    out = run_dir / "metrics.png" if out is None else Path(out)

    fig, (ax_loss, ax_tp) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True, height_ratios=[3, 2])
    fig.suptitle(run_dir.resolve().name)

    # Top: train loss as a thin line (it is noisy and dense), val loss as markers on a line
    # (sparse, one point per eval), so the eye can tell them apart at any density.
    train_steps, train_loss = _series(records, "train", "loss")
    val_steps, val_loss = _series(records, "val", "loss")
    for steps, values, label, style in (
        (train_steps, train_loss, "train loss", dict(color="tab:blue", lw=1.0, alpha=0.85)),
        (val_steps, val_loss, "val loss", dict(color="tab:orange", lw=1.5, marker="o", ms=4)),
    ):
        if steps:
            last = _last_finite(values)
            label = f"{label} (last {last:.4g})" if last is not None else label
            ax_loss.plot(steps, values, label=label, **style)
    if train_steps or val_steps:
        ax_loss.legend(loc="upper right")
    else:
        _no_data(ax_loss, "no loss logged")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(True, alpha=0.3)

    # Bottom: throughput, with MFU (as %) on a second y axis when the trainer logged it.
    tp_steps, tp = _series(records, "train", "tokens_per_s")
    mfu_steps, mfu = _series(records, "train", "mfu")
    handles = []
    if tp_steps:
        handles += ax_tp.plot(tp_steps, tp, color="tab:green", lw=1.0, label="tokens/s")
        ax_tp.yaxis.set_major_formatter(EngFormatter())
        ax_tp.set_ylim(bottom=0)
    ax_tp.set_ylabel("tokens / s")
    if mfu_steps:
        ax_mfu = ax_tp.twinx()
        handles += ax_mfu.plot(mfu_steps, [100 * v for v in mfu], color="tab:red", lw=1.0, alpha=0.8, label="MFU")
        ax_mfu.set_ylabel("MFU (%)")
        ax_mfu.set_ylim(bottom=0)
    if handles:
        ax_tp.legend(handles=handles, loc="lower right")
    else:
        _no_data(ax_tp, "no throughput logged")
    ax_tp.set_xlabel("step")
    ax_tp.grid(True, alpha=0.3)

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)  # long-lived processes (the trainer) would otherwise leak figures
    return out
