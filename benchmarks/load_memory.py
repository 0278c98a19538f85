"""Peak host memory of `jaxllm sample` on an imported model, against the weights' size.

Inference reads only the parameters of a checkpoint (jaxllm/train/load.py); restoring the
whole train state (params + the two AdamW moments) costs ~3x the weights. This builds a
random Llama-architecture model with `transformers` (~250M parameters, float32: ~1 GB, so
the weights dominate the ~0.5 GB a bare JAX process holds), imports it with
`jaxllm convert from-hf`, and measures the RSS high-water mark (`/usr/bin/time -v`,
"Maximum resident set size") of:
  - baselines: `jaxllm --help` (python and the CLI), and a process that imports what
    `sample` imports (jax, jaxllm's CLI, generation and loading code) and starts JAX's
    CPU backend, then exits: what `sample` holds before it reads a byte of weights;
  - sample: `jaxllm sample RUN --prompt ... --max-new-tokens 8` with this tree's code;
  - sample, before: the same command with the code of `--before TREE` (a checkout of the
    older load path, e.g. `git worktree add /tmp/oldload <commit>`), if given.
The weights' size is that of the model's safetensors files (float32).

    python benchmarks/load_memory.py                          # ~3 min on 2 CPU cores; writes BENCHMARKS.md
    git worktree add --detach /tmp/oldload b4ba2b3            # the whole-state load, before weights-only
    python benchmarks/load_memory.py --before /tmp/oldload    # ...measured side by side
    python benchmarks/load_memory.py --quick                  # a small model: a smoke test, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import git_revision, write_section  # noqa: E402

LINES = ["the quick brown fox jumps over the lazy dog", "a tokenizer trained offline on a handful of lines"]
FULL = {"vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 14,
        "num_attention_heads": 16, "num_key_value_heads": 16}  # fmt: skip
QUICK = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 4}  # fmt: skip
MB = 1e6
SAMPLE = ["--prompt", "the quick", "--max-new-tokens", "8", "--temperature", "0"]
BASELINE = ("import jax, jax.numpy as jnp, jaxllm.cli, jaxllm.interactive, jaxllm.generation, jaxllm.train.load; "
            "jnp.zeros(8).block_until_ready()")  # fmt: skip


def build_hf_model(directory: Path, sizes: dict) -> int:
    """A random LlamaForCausalLM (float32, untied) and a small BPE tokenizer saved in `directory`;
    returns the parameter count."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**sizes, max_position_embeddings=256, tie_word_embeddings=False,
                                      bos_token_id=None, eos_token_id=None, torch_dtype="float32")  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(directory)
    count = sum(p.numel() for p in model.parameters())
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(LINES * 4, trainer)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return count


def peak_rss(command: list[str], tree: Path) -> tuple[float, str]:
    """(maximum resident set size in bytes, the command's stderr) of `command` run under
    /usr/bin/time -v with `tree`'s jaxllm first on the path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(["/usr/bin/time", "-v", *command], env=env, capture_output=True, text=True)
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no RSS figure from /usr/bin/time:\n{done.stderr[-2000:]}")
    return int(found.group(1)) * 1024.0, done.stderr + done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a checkout of the older code to measure side by side")
    parser.add_argument("--quick", action="store_true", help="a small model; writes nothing")
    parser.add_argument("--workdir", type=Path, help="keep the model and run here (default: a temp dir)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="jaxllm-load-memory-"))
    hf, run = work / "hf", work / "run"
    if not (hf / "config.json").is_file():
        hf.mkdir(parents=True, exist_ok=True)
        build_hf_model(hf, QUICK if args.quick else FULL)
    trees = [("sample, params only (this tree)", REPO, run)]
    if args.before:  # imported by the older code too: its config.yaml may not know newer keys
        trees.insert(0, ("sample, whole train state (--before)", args.before, work / "run-before"))
    for _, tree, folder in trees:
        if not (folder / "config.yaml").is_file():
            env = {**os.environ, "PYTHONPATH": str(tree), "JAX_PLATFORMS": "cpu"}
            subprocess.run(["jaxllm", "convert", "from-hf", str(hf), str(folder)], env=env, check=True)
    weights = sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    bare, _ = peak_rss(["jaxllm", "--help"], REPO)
    baseline, _ = peak_rss([sys.executable, "-c", BASELINE], REPO)
    rows = [("`jaxllm --help`", bare), ("baseline: jax + jaxllm imported, CPU backend started", baseline)]
    for what, tree, folder in trees:
        peak, output = peak_rss(["jaxllm", "sample", str(folder), *SAMPLE], tree)
        if "Exit status: 0" not in output:
            raise SystemExit(f"{what} failed:\n{output[-3000:]}")
        rows.append((what, peak))
        print(f"{what}: peak RSS {peak / MB:,.0f} MB", flush=True)
    print(f"weights (safetensors, float32): {weights / MB:,.0f} MB; baseline {baseline / MB:,.0f} MB")
    if args.quick:
        return
    table = ["| process | peak RSS (MB) | peak - baseline (MB) | peak / weights | (peak - baseline) / weights |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for what, peak in rows:
        table.append(f"| {what} | {peak / MB:,.0f} | {(peak - baseline) / MB:,.0f} | {peak / weights:.2f} | "
                     f"{(peak - baseline) / weights:.2f} |")  # fmt: skip
    sizes = ", ".join(f"{k} {v}" for k, v in FULL.items())
    command = "`python benchmarks/load_memory.py" + (" --before TREE`" if args.before else "`")
    if args.before:
        rev = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()  # fmt: skip
        command += f"; TREE: `git worktree add --detach TREE {rev}`, the code before weights-only loading"
    body = f"""## Peak host memory of `jaxllm sample` ({command})

Machine: {platform.machine()}, cpu, git {git_revision()}. A random Llama (transformers `LlamaConfig`: {sizes},
untied, float32) saved with `save_pretrained` ({weights / MB:,.0f} MB of safetensors) and imported with
`jaxllm convert from-hf HF RUN`. Each figure is the "Maximum resident set size" of `/usr/bin/time -v` for

```bash
JAX_PLATFORMS=cpu /usr/bin/time -v jaxllm sample RUN --prompt "the quick" --max-new-tokens 8 --temperature 0
```

The baseline is `python -c "{BASELINE}"`: what `sample` imports, with JAX's CPU backend started and nothing
read; "peak - baseline" is what the model itself costs. `jaxllm --help` is shown for scale.

{chr(10).join(table)}

The whole-state load restored params and both AdamW moments (3x the weights) and kept the read buffers; the
params-only load reads a few leaves at a time, so its peak is the weights plus ~2x the largest leaf (here the
stacked MLP kernels, 161 MB) while reading. Goal (issue 20): peak - baseline within 1.5x the weights.
"""
    write_section("load_memory", body)
    print(body)


if __name__ == "__main__":
    main()
