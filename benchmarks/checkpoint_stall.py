"""How long an asynchronous orbax checkpoint save blocks the train step loop, from a real run.

A checkpoint save is asynchronous (jaxllm/train/checkpoint.py): the loop blocks while orbax
copies the state off the devices and starts its background writes, then trains on while
they finish. That blocking part is the run's checkpoint badput, which the goodput records
of metrics.jsonl count as checkpoint_s (jaxllm/train/goodput.py). This trains a small run
through the ordinary trainer with a metrics line per step and reads each save's stall off
those records: the growth of checkpoint_s from the record of the save's step to the next.
The first save is listed apart: it pays orbax's one-time set-up.

    python -m benchmarks checkpoint_stall                   # shakespeare-char-cpu, 120 steps, a save every 20
    python -m benchmarks checkpoint_stall --every 10 model.num_layers=8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import jaxllm
from jaxllm.data.ready import ensure_data
from jaxllm.train.goodput import GOODPUT_SPLIT
from jaxllm.train.metrics import read_metrics
from jaxllm.train.trainer import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def stalls(records: list[dict], every: int, last: int) -> list[tuple[int, float]]:
    """[(step, seconds the loop was blocked by the save at step), ...] for the saves before
    the last step (the last one's stall is not apart from the final wait for the writes)."""
    by_step = {r["step"]: r for r in records if r["split"] == GOODPUT_SPLIT}
    return [(k, by_step[k + 1]["checkpoint_s"] - by_step[k]["checkpoint_s"]) for k in range(every, last, every)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="shakespeare-char-cpu")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--every", type=int, default=20, help="train.checkpoint_every")
    ap.add_argument("overrides", nargs="*", help="more config overrides, key=value")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="jaxllm-stall-"))
    cfg = jaxllm.load_config(args.config, [
        f"tokenizer.path={tmp}/char.model", f"data.inputs=[{SHARED}/tinyshakespeare.txt]", f"data.path={tmp}/data",
        f"train.out_dir={tmp}/run", f"train.steps={args.steps}", f"train.checkpoint_every={args.every}",
        "train.log_every=1", f"train.eval_every={args.steps + 1}", "train.tensorboard=false",
        f"train.keep_checkpoints={args.steps // args.every + 1}", *args.overrides])  # fmt: skip
    ensure_data(cfg, log=lambda _: None)
    result = train(cfg, log=lambda _: None)
    records = read_metrics(result.run_dir)
    saves = stalls(records, args.every, args.steps)
    goodput = [r for r in records if r["split"] == GOODPUT_SPLIT]
    final, before_end = goodput[-1], goodput[-2]
    steady = [s for _, s in saves[1:]]
    step_s = (final["step_s"] + final["data_wait_s"]) / (args.steps - 1)  # the loop's time per step, compile aside
    state_mb = sum(p.stat().st_size for p in (result.run_dir / "checkpoints" / str(args.steps)).rglob("*")
                   if p.is_file()) / 2**20  # fmt: skip
    print(f"command: python -m benchmarks checkpoint_stall {' '.join(sys.argv[1:])}")
    print(f"{args.config}, {args.steps} steps, a save every {args.every}; one checkpoint {state_mb:.1f} MiB on disk")
    print(f"per-save stall of the step loop: first save (step {saves[0][0]}) {saves[0][1] * 1e3:.0f} ms; the other "
          f"{len(steady)}: median {statistics.median(steady) * 1e3:.0f} ms, min {min(steady) * 1e3:.0f} ms, "
          f"max {max(steady) * 1e3:.0f} ms")  # fmt: skip
    print(f"a train step for comparison: {step_s * 1e3:.1f} ms (step_s + data_wait_s per step)")
    end = final["checkpoint_s"] - before_end["checkpoint_s"]
    print(f"last save + the wait for its writes at the end: {end * 1e3:.0f} ms")
    fields = ("startup_s", "compile_s", "step_s", "data_wait_s", "checkpoint_s", "eval_s", "other_s", "wall_s")
    print("goodput record: " + ", ".join(f"{f} {final[f]:.2f}" for f in fields) + f", goodput {final['goodput']:.3f}")


if __name__ == "__main__":
    main()
