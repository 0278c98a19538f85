"""One picture of a run: loss (or reward), learning rate and throughput, one panel each.

Why a PNG and not only TensorBoard: a PNG can be written at the end of a run (or from a
finished run dir, any time later), attached to a report, and looked at without a server.
It reads only metrics.jsonl via `read_metrics`, so it shows exactly what the record holds,
with resumed steps already de-duplicated.

Why the panels are chosen from the record rather than fixed: jaxllm writes several kinds of
run into the same metrics.jsonl format (pre-training, SFT, reward model, DPO, PPO), and they
log different things. A fixed layout would either show empty panels or miss the number that
matters for that kind of run (a reward model's accuracy, PPO's reward and KL). `panels`
looks at which keys the train records carry and returns the list of panels to draw, top to
bottom, all on one shared "step" x axis so a spike in one can be matched with the others:

    "loss"        train loss (line) and val loss (markers)                every run but PPO
    "reward"      train reward (line) and val reward (markers)            PPO: it logs no train loss
    "preference"  train accuracy and margin (twin axis), val_preference   reward model, DPO
                  accuracy (markers)
    "kl"          train KL to the reference policy (line), val KL         PPO
    "lr"          learning rate (warmup + decay should be visible)        every run that logs lr
    "throughput"  tokens/s, with MFU (%) on a twin axis when logged       token-batched trainers
    "iteration_s" seconds per PPO iteration (rollout + update)            PPO: it logs no tokens/s

The first panel is always present (with a "no loss logged" note if there is nothing to put in
it), so even a run that logged almost nothing gives a picture rather than an error.

Metric names it knows (anything else is ignored; anything missing is simply left out):
    train:          loss, reward, accuracy, margin, kl, lr, tokens_per_s, mfu (fraction 0..1), iteration_s
    val:            loss, reward, kl
    val_preference: accuracy
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: training machines have no display; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter  # noqa: E402

from jaxllm.config import OptimizerConfig  # noqa: E402
from jaxllm.train.metrics import METRICS_FILE, MetricsError, MissingMetrics, read_metrics  # noqa: E402
from jaxllm.train.optimizer import lr_schedule  # noqa: E402

PANEL_HEIGHT_IN = 2.6  # inches per panel; the figure is 10 inches wide
DPI = 120

# Train series are dense and noisy: a thin line. Val series are sparse (one point per eval):
# markers on a line. The eye can then tell them apart at any density.
_TRAIN = dict(color="tab:blue", lw=1.0, alpha=0.85)
_VAL = dict(color="tab:orange", lw=1.5, marker="o", ms=4)
_SPARSE = 40  # below this many points a train line also gets small dots, so each logged value shows


def panels(records: list[dict[str, Any]]) -> list[str]:
    """The panels to draw for `records`, top to bottom (names as in the module docstring).

    Decided from the keys the *train* records carry, because every kind of run logs train
    records and their keys say what kind of run it is (val records are optional and sparse).
    """
    keys: set[str] = set()
    for r in records:
        if r.get("split") == "train":
            keys.update(r)
    out = ["reward" if "loss" not in keys and "reward" in keys else "loss"]
    if "accuracy" in keys:
        out.append("preference")
    if "kl" in keys:
        out.append("kl")
    if "lr" in keys:
        out.append("lr")
    if "tokens_per_s" in keys:
        out.append("throughput")
    elif "iteration_s" in keys:
        out.append("iteration_s")
    return out


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


def _with_last(label: str, values: list[float], fmt: Callable[[float], str] = "{:.4g}".format) -> str:
    """`label` with the series' last finite value, so the legend answers "where did it end?"."""
    last = _last_finite(values)
    return f"{label} (last {fmt(last)})" if last is not None else label


def _train_style(n: int, **overrides: Any) -> dict[str, Any]:
    style = {**_TRAIN, **overrides}
    if n < _SPARSE:
        style.update(marker=".", ms=5)
    return style


def _sci(value: float, _pos: Any = None) -> str:
    """Compact scientific notation for learning rates: 6e-4, 1.25e-4, 0.

    Every tick label carries its own exponent, so there is no offset text ("1e-4" above the
    axis, as ScalarFormatter writes it) to collide with the panel above.
    """
    if value == 0:
        return "0"
    mantissa, exponent = f"{value:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _no_data(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def _legend(ax: plt.Axes, handles: list, empty_text: str) -> None:
    """One row of legend entries just above the panel, outside the plotting area.

    Outside, because no place inside is safe for every run: a rising reward, a falling loss
    and a margin on a twin axis (whose lines `loc="best"` does not see) each cover a different
    corner. Above the panel there is room anyway, since the shared x axis puts no tick labels there.
    """
    if handles:
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1), ncol=len(handles), fontsize="small",
                  frameon=False, borderaxespad=0.2, borderpad=0, columnspacing=1.5, handlelength=1.8)  # fmt: skip
    else:
        _no_data(ax, empty_text)


def _train_val(ax: plt.Axes, records: list[dict[str, Any]], key: str, val_split: str = "val") -> list:
    """Train `key` as a line and `val_split` `key` as markers; returns the legend handles."""
    handles = []
    steps, values = _series(records, "train", key)
    if steps:
        handles += ax.plot(steps, values, label=_with_last(f"train {key}", values), **_train_style(len(steps)))
    steps, values = _series(records, val_split, key)
    if steps:
        handles += ax.plot(steps, values, label=_with_last(f"val {key}", values), **_VAL)
    return handles


def _draw_loss(ax: plt.Axes, records: list[dict[str, Any]]) -> None:
    _legend(ax, _train_val(ax, records, "loss"), "no loss logged")
    ax.set_ylabel("loss")


def _draw_reward(ax: plt.Axes, records: list[dict[str, Any]]) -> None:
    _legend(ax, _train_val(ax, records, "reward"), "no reward logged")
    ax.set_ylabel("reward")


def _draw_preference(ax: plt.Axes, records: list[dict[str, Any]]) -> None:
    # Accuracy (fraction of pairs where chosen scores above rejected) on a fixed 0..1 axis with
    # chance (0.5) marked, so "is it learning at all" reads at a glance; the margin (score gap)
    # has its own scale and goes on a twin axis.
    steps, acc = _series(records, "train", "accuracy")
    handles = ax.plot(steps, acc, label=_with_last("train accuracy", acc, "{:.3f}".format), **_train_style(len(steps)))
    val_steps, val_acc = _series(records, "val_preference", "accuracy")
    if val_steps:
        # Measured only before and after training: markers without a line, which would
        # suggest a path between them that nobody measured.
        style = {**_VAL, "ls": "none", "ms": 7}
        handles += ax.plot(val_steps, val_acc, label=_with_last("held-out accuracy", val_acc, "{:.3f}".format), **style)
    ax.axhline(0.5, color="gray", lw=0.8, ls=":")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    m_steps, margin = _series(records, "train", "margin")
    if m_steps:
        ax_m = ax.twinx()
        style = _train_style(len(m_steps), color="tab:purple", alpha=0.8)
        handles += ax_m.plot(m_steps, margin, label=_with_last("train margin", margin), **style)
        ax_m.set_ylabel("margin")
    _legend(ax, handles, "no accuracy logged")


def _draw_kl(ax: plt.Axes, records: list[dict[str, Any]]) -> None:
    _legend(ax, _train_val(ax, records, "kl"), "no KL logged")
    ax.set_ylabel("KL to reference")


def lr_curve(run_dir: Path, records: list[dict[str, Any]]) -> tuple[list[int], list[float]] | None:
    """The run's learning-rate schedule at every step, from its config.yaml, or None.

    The trainer logs lr only every `log_every` steps, which hides a 100-step warmup behind
    the first point. The schedule itself is a pure function of the optimizer config, so it
    is drawn in full, but only if it agrees with every logged value (a run whose steps
    mean something else, or a changed schedule, falls back to the logged points)."""
    steps, logged = _series(records, "train", "lr")
    try:
        section = yaml.safe_load((run_dir / "config.yaml").read_text())["optimizer"]
        schedule = lr_schedule(OptimizerConfig(**section))
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None
    if not steps:
        return None
    # The trainer logs the lr of the update it just made: step s used schedule(s - 1).
    for offset in (1, 0):
        if all(math.isclose(float(schedule(s - offset)), v, rel_tol=1e-3, abs_tol=1e-12) for s, v in zip(steps, logged,
                                                                                                         strict=True)):
            grid = list(range(offset, steps[-1] + 1))
            return grid, [float(v) for v in schedule(np.asarray(grid) - offset)]
    return None


def _draw_lr(ax: plt.Axes, records: list[dict[str, Any]], curve: tuple[list[int], list[float]] | None = None) -> None:
    # Linear, not log: a warmup from 0 and a cosine decay are shapes on a linear axis, and a
    # log axis cannot show the 0 a warmup starts from.
    steps, lr = _series(records, "train", "lr")
    finite = [v for v in lr if math.isfinite(v)]
    if curve is not None:
        handles = ax.plot(*curve, color="tab:gray", lw=1.5, label=f"schedule (peak {_sci(max(curve[1]))})")
        handles += ax.plot(steps, lr, ls="none", marker="o", ms=3, color="black", label="logged")
    else:
        label = f"lr (peak {_sci(max(finite))}, last {_sci(finite[-1])})" if finite else "lr"
        handles = ax.plot(steps, lr, label=label, **_train_style(len(steps), color="tab:gray", alpha=1.0))
    ax.yaxis.set_major_formatter(FuncFormatter(_sci))
    ax.set_ylim(bottom=0)
    ax.set_ylabel("learning rate")
    _legend(ax, handles, "no lr logged")


def _draw_throughput(ax: plt.Axes, records: list[dict[str, Any]]) -> None:
    # Throughput, with MFU (as %) on a second y axis when the trainer logged it. MFU is
    # tokens/s times a constant, so with both axes from 0 the two curves coincide: MFU is
    # dashed so the green line still shows through.
    tp_steps, tp = _series(records, "train", "tokens_per_s")
    label = _with_last("tokens/s", tp, EngFormatter(places=2))
    handles = ax.plot(tp_steps, tp, label=label, **_train_style(len(tp_steps), color="tab:green", lw=1.5, alpha=1.0))
    ax.yaxis.set_major_formatter(EngFormatter())
    ax.set_ylim(bottom=0)
    ax.set_ylabel("tokens / s")
    mfu_steps, mfu = _series(records, "train", "mfu")
    if mfu_steps:
        ax_mfu = ax.twinx()
        pct = [100 * v for v in mfu]
        label = _with_last("MFU", pct, "{:.1f}%".format)
        handles += ax_mfu.plot(mfu_steps, pct, color="tab:red", lw=1.0, ls="--", label=label)
        ax_mfu.set_ylabel("MFU (%)")
        ax_mfu.set_ylim(bottom=0)
    _legend(ax, handles, "no throughput logged")


def _draw_iteration_s(ax: plt.Axes, records: list[dict[str, Any]]) -> None:
    # PPO's unit of work is an iteration (rollout + a few update epochs), not a token batch,
    # so its speed is wall seconds per iteration: lower is faster.
    steps, secs = _series(records, "train", "iteration_s")
    label = _with_last("s / iteration", secs, "{:.3g} s".format)
    handles = ax.plot(steps, secs, label=label, **_train_style(len(steps), color="tab:green", alpha=1.0))
    ax.set_ylim(bottom=0)
    ax.set_ylabel("s / iteration")
    _legend(ax, handles, "no iteration time logged")


_DRAW: dict[str, Callable[[plt.Axes, list[dict[str, Any]]], None]] = {
    "loss": _draw_loss,
    "reward": _draw_reward,
    "preference": _draw_preference,
    "kl": _draw_kl,
    "lr": _draw_lr,
    "throughput": _draw_throughput,
    "iteration_s": _draw_iteration_s,
}


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot the run in `run_dir` to `out` (default RUN_DIR/metrics.png) and return the PNG's path.

    One panel per entry of `panels(records)`, stacked on a shared step axis; the figure is
    10 x 2.6*N inches at 120 dpi, so it grows with what the run logged instead of squeezing.
    Raises MissingMetrics (a FileNotFoundError) if the run has no metrics.jsonl, MetricsError
    (a ValueError) if it has no train records: both are DataErrors, one line from the CLI.
    """
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        where = "run dir" if run_dir.is_dir() else "run dir (it does not exist)"
        raise MissingMetrics(f"no {METRICS_FILE} in {where} {run_dir}: nothing to plot; give the directory of a "
                             "run (jaxllm train, sft, dpo, reward or ppo) that has logged")  # fmt: skip
    records = read_metrics(run_dir)
    if not any(r.get("split") == "train" for r in records):
        raise MetricsError(f"{run_dir / METRICS_FILE} holds no train points: nothing to plot; plot the run once it "
                           "has logged a step (train.log_every)")  # fmt: skip
    out = run_dir / "metrics.png" if out is None else Path(out)

    names = panels(records)
    fig, axes = plt.subplots(len(names), 1, figsize=(10, PANEL_HEIGHT_IN * len(names)), sharex=True, squeeze=False)
    fig.suptitle(run_dir.resolve().name)
    for name, ax in zip(names, axes[:, 0], strict=True):
        if name == "lr":
            _draw_lr(ax, records, lr_curve(run_dir, records))
        else:
            _DRAW[name](ax, records)
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("step")

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)  # long-lived processes (the trainer) would otherwise leak figures
    return out
