"""`jaxllm quickstart`: the whole path on one machine, in a few minutes on a laptop CPU.

fetch tiny Shakespeare -> train a character-level tokenizer -> prepare shards ->
train nanoGPT's CPU recipe (4 layers, 128 dims, 2000 steps) -> sample some lines.
Everything goes under one directory, printed at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import jax

from jaxllm.config import load_config
from jaxllm.data.fetch import fetch
from jaxllm.data.prepare import prepare
from jaxllm.data.ready import train_tokenizer
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.generation import sample
from jaxllm.train.load import load_run
from jaxllm.train.trainer import train

SHARED_GUESSES = ("../shared/data", "shared/data")  # a checkout beside the project's shared corpora


def _local_corpus() -> Path | None:
    for guess in SHARED_GUESSES:
        if (Path(guess) / "tinyshakespeare.txt").is_file():
            return Path(guess)
    return None


def recipe_overrides(root: Path, corpus: Path, steps: int | None, devices: int) -> tuple[list[str], str | None]:
    """(overrides of the shakespeare-char-cpu recipe, a note for the log or None).

    Everything lives under `root`. A shorter run (`steps`) still logs and evaluates four
    times, so its plot has a curve; the recipe's batch of 12 is rounded up to a multiple of
    `devices`, since every device must get equal rows."""
    overrides = [f"tokenizer.path={root}/tokenizer/char.model", f"data.inputs=[{corpus}]", f"data.path={root}/data",
                 f"train.out_dir={root}/run"]  # fmt: skip
    if steps is not None:
        every = max(steps // 4, 1)
        overrides += [f"train.steps={steps}", f"train.eval_every={every}", f"train.log_every={every}"]
    if 12 % devices == 0:
        return overrides, None
    batch = -(-12 // devices) * devices
    note = f"note: {devices} devices; batch 12 rounded up to {batch} so every device gets equal rows"
    return [*overrides, f"train.batch_size={batch}"], note


def quickstart(
    out: str = "runs/quickstart",
    steps: int | None = None,
    from_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    start = time.perf_counter()
    root = Path(out)
    local = Path(from_dir) if from_dir else _local_corpus()
    log(f"== 1/5 fetch tiny Shakespeare{f' (local copy {local})' if local else ''}")
    corpus = fetch("tinyshakespeare", root / "corpus", from_dir=local, log=log)
    overrides, note = recipe_overrides(root, corpus, steps, jax.device_count())
    if note:
        log(note)
    cfg = load_config("shakespeare-char-cpu", overrides)
    log("== 2/5 train a character-level tokenizer")
    tokenizer = train_tokenizer(cfg, log)
    log("== 3/5 prepare shards (last 10% held out for validation)")
    prepare(cfg, log)
    log(f"== 4/5 train nanoGPT's CPU recipe for {cfg.train.steps} steps")
    result = train(cfg, log)
    log("== 5/5 sample")
    prompt = tokenizer.encode("\n").tolist()
    ids = sample(cfg, _params(result.run_dir), prompt, 400, seed=0, vocab_limit=tokenizer.vocab_size)
    text = tokenizer.decode(ids)
    log("-" * 60 + "\n" + text.strip() + "\n" + "-" * 60)
    val = result.val_losses.get(result.step)
    log(f"done in {time.perf_counter() - start:.0f}s; final val loss {val:.4f}" if val else "done")
    log(f"  corpus      {corpus}\n  tokenizer   {cfg.tokenizer.path}\n  shards      {cfg.data.path}\n"
        f"  run         {result.run_dir} (checkpoints/, metrics.jsonl, tensorboard/, config.yaml)\n"
        f"  plot it     jaxllm plot {result.run_dir}")  # fmt: skip
    load_tokenizer(cfg.tokenizer.path)  # the tokenizer file is where we said it is
    return result.run_dir


def _params(run_dir: Path):
    return load_run(run_dir)[1]
