"""The `jaxllm` command line: one verb per stage of the pipeline.

This file only parses arguments and prints; the work lives in the library, so every
verb is also a function call away for notebooks and scripts.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxllm.cli.args import Parser, bounded, non_negative, positive
from jaxllm.cli.report import DEBUG_ENV, debug_requested, report
from jaxllm.config import ConfigError, list_presets, load_config, to_yaml
from jaxllm.host import restore_interrupts


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help=f"a YAML path or a preset name ({', '.join(list_presets())})")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.num_layers=4")


def _config_show(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    print(to_yaml(cfg), end="")
    from jaxllm.parallel.rules import sharding_table  # imports jax; after the YAML so errors come first

    print(sharding_table(cfg))


def _model_summary(args: argparse.Namespace) -> None:
    from jaxllm.model.summary import summary_table  # imports jax: only the verbs that need it pay for it

    cfg = load_config(args.config, args.overrides)
    print(summary_table(cfg, args.seq_len))


def _data_fetch(args: argparse.Namespace) -> None:
    from jaxllm.data.fetch import fetch

    fetch(args.name, args.out, from_dir=args.from_dir)


def _data_prepare(args: argparse.Namespace) -> None:
    from jaxllm.data.prepare import prepare

    prepare(load_config(args.config, args.overrides))


def _data_verify(args: argparse.Namespace) -> None:
    from jaxllm.data.loader import DocumentStore

    cfg = load_config(args.config, args.overrides)
    for split in ("train", "val"):
        store = DocumentStore(cfg.data.path, split, verify=True)
        print(f"{split}: {len(store):,} documents, {int(store.lengths.sum()):,} tokens, checksums ok")


def _tokenizer_train(args: argparse.Namespace) -> None:
    from jaxllm.data.ready import train_tokenizer

    train_tokenizer(load_config(args.config, args.overrides))


def _multiprocess_args(p: argparse.ArgumentParser) -> None:
    """Flags that join a multi-process run (default: SLURM / TPU-pod detection, else one process)."""
    p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (env JAXLLM_COORDINATOR)")
    p.add_argument("--num-processes", action=positive(), help="processes in the run (env JAXLLM_NUM_PROCESSES)")
    p.add_argument("--process-id", action=non_negative(), help="this process's rank, from 0 (env JAXLLM_PROCESS_ID)")


def _joined(args: argparse.Namespace, work, prepare=None) -> int:
    """Run `work()` as this process's part of a (possibly) multi-process run: join it,
    let process 0 alone run `prepare()` while the others wait, leave it cleanly."""
    from jaxllm.parallel import distributed

    cluster = distributed.initialize(distributed.detect(args.coordinator, args.num_processes, args.process_id))
    try:
        if prepare is not None:
            if distributed.is_primary():
                prepare()
            if cluster.multi:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("jaxllm: prepared")
        return work()
    finally:
        distributed.shutdown()


def _reset_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reset", action="store_true",
                   help="start over: first move what train.out_dir holds into its archive/")  # fmt: skip


def _train(args: argparse.Namespace) -> int:
    from jaxllm.data.ready import ensure_data
    from jaxllm.train.trainer import train_main

    cfg = load_config(args.config, args.overrides)  # config errors first, before joining anything
    return _joined(args, lambda: train_main(cfg, reset=args.reset), prepare=lambda: ensure_data(cfg))


def _quickstart(args: argparse.Namespace) -> None:
    from jaxllm.quickstart import quickstart

    quickstart(args.out, args.steps, args.from_dir)


def _sample(args: argparse.Namespace) -> None:
    from jaxllm.interactive import run_sample

    run_sample(args)


def _chat(args: argparse.Namespace) -> None:
    from jaxllm.interactive import run_chat

    run_chat(args)


def _sampling_args(p: argparse.ArgumentParser, max_new_tokens: int, temperature: float) -> None:
    p.add_argument("run_dir", help="a run directory written by `jaxllm train` (its newest checkpoint is used)")
    p.add_argument("--max-new-tokens", action=positive(), default=max_new_tokens)
    p.add_argument("--temperature", action=non_negative(float, "0 = greedy"), default=temperature,
                   help="0 = greedy")  # fmt: skip
    p.add_argument("--top-k", action=non_negative(hint="0 = off"), default=0,
                   help="keep the k most likely tokens (0 = off)")  # fmt: skip
    p.add_argument("--top-p", action=bounded(float, 0, 1, above=True, hint="1 = off"), default=1.0,
                   help="nucleus: most likely tokens up to mass p (1 = off)")  # fmt: skip
    p.add_argument("--min-p", action=bounded(float, 0, 1, hint="0 = off"), default=0.0,
                   help="drop tokens below min_p x the top probability (0 = off)")  # fmt: skip
    p.add_argument("--repetition-penalty", action=positive(float, "1 = off"), default=1.0,
                   help="> 1 discourages repeats (1 = off)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)


def _exit_code(result) -> int:
    """0, or 128 + the signal that stopped a post-training run (as `jaxllm train` does)."""
    return 128 + result.interrupted if result.interrupted is not None else 0


def _sft(args: argparse.Namespace) -> int:
    from jaxllm.posttrain.sft import sft, sft_config

    cfg = sft_config(args.source, args.overrides)
    return _joined(args, lambda: _exit_code(sft(cfg, reset=args.reset)))


def _dpo(args: argparse.Namespace) -> int:
    from jaxllm.posttrain.dpo import dpo
    from jaxllm.posttrain.sft import sft_config

    return _exit_code(dpo(sft_config(args.source, args.overrides, suffix="dpo"), reset=args.reset)[0])


def _reward(args: argparse.Namespace) -> int:
    from jaxllm.posttrain.reward import reward
    from jaxllm.posttrain.sft import sft_config

    cfg = sft_config(args.source, [*args.overrides, "model.head=scalar"], suffix="reward")
    return _exit_code(reward(cfg, reset=args.reset)[0])


def _ppo(args: argparse.Namespace) -> int:
    from jaxllm.posttrain.ppo_loop import ppo
    from jaxllm.posttrain.sft import sft_config

    return _exit_code(ppo(sft_config(args.source, args.overrides, suffix="ppo"), reset=args.reset))


def _plot(args: argparse.Namespace) -> None:
    from jaxllm.viz.curves import plot_run

    print(f"wrote {plot_run(args.run_dir, args.out)}")


def _viz_attention(args: argparse.Namespace) -> None:
    from jaxllm.train.checkpoint import Checkpointer
    from jaxllm.train.load import load_run, load_run_tokenizer
    from jaxllm.viz._figure import token_pieces
    from jaxllm.viz.attention import attention_maps, check_indices, plot_attention, plot_attention_across_steps

    cfg, params, step = load_run(args.run_dir)
    check_indices(cfg.model.num_layers, cfg.model.num_heads, args.layer, args.head)
    tokenizer = load_run_tokenizer(cfg)
    ids = [int(i) for i in tokenizer.encode(args.prompt)]
    pieces = token_pieces(tokenizer, ids)
    out = args.out or str(Path(args.run_dir) / ("attention_steps.png" if args.across_checkpoints else "attention.png"))
    if args.across_checkpoints:
        layer, head = (args.layer or [0])[0], (args.head or [0])[0]
        steps = Checkpointer(Path(args.run_dir) / "checkpoints").steps()
        # The newest checkpoint is already loaded; restore only the others.
        maps = {s: attention_maps(cfg, params if s == step else load_run(args.run_dir, step=s)[1], ids) for s in steps}
        print(f"wrote {plot_attention_across_steps(maps, pieces, layer, head, out)} (steps {steps})")
        return
    maps = attention_maps(cfg, params, ids)
    title = f"{Path(args.run_dir).name} at step {step}: {len(ids)} tokens"
    print(f"wrote {plot_attention(maps, pieces, out, args.layer, args.head, title)}")


def _viz_tokens(args: argparse.Namespace) -> None:
    from jaxllm.data.tokenizer import load_tokenizer
    from jaxllm.posttrain.data import read_utf8
    from jaxllm.viz.tokens import plot_tokens

    text = args.text if args.text is not None else read_utf8(args.file, "--file")[: args.max_chars]
    print(f"wrote {plot_tokens(load_tokenizer(args.tokenizer), text, args.out, args.width, Path(args.tokenizer).name)}")


def _viz_mesh(args: argparse.Namespace) -> None:
    from jaxllm.viz.mesh import device_table, parameter_names, plot_mesh

    if args.devices < 1:
        raise ConfigError(f"--devices {args.devices}: the mesh needs at least 1 device; give e.g. --devices 8")
    cfg = load_config(args.config, args.overrides)
    if args.param not in parameter_names(cfg):
        raise ConfigError(f"--param {args.param!r} is not a parameter of this model; choose one of: "
                          f"{', '.join(parameter_names(cfg))}")  # fmt: skip
    print(f"wrote {plot_mesh(cfg, args.param, args.devices, args.out)}")
    print("\n".join(device_table(cfg, args.devices)))


def _tokenizer_encode(args: argparse.Namespace) -> None:
    from jaxllm.data.tokenizer import load_tokenizer

    text = args.text if args.text is not None else sys.stdin.read()
    print(" ".join(str(i) for i in load_tokenizer(args.tokenizer).encode(text)))


def _tokenizer_compare(args: argparse.Namespace) -> None:
    import dataclasses
    import json

    from jaxllm.data.tokenizer_compare import compare, describe_split, format_table
    from jaxllm.errors import DataError
    from jaxllm.posttrain.data import read_utf8

    path = Path(args.file)
    text = read_utf8(path, "--file")
    if not text:
        raise DataError(f"--file {args.file}: the file is empty; give a file with some text")
    header = describe_split(path.name, text, args.heldout)
    rows = compare(text, args.vocab_sizes, args.impl, args.heldout, args.out_dir,
                   log=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
    print(header)
    print()
    print(format_table(rows))
    if args.out_dir:
        print(f"saved {', '.join(Path(r.model_path).name for r in rows if r.model_path)} in {args.out_dir}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1) + "\n")
        print(f"wrote {args.json}")


def _tokenizer_decode(args: argparse.Namespace) -> None:
    from jaxllm.data.tokenizer import load_tokenizer

    ids = args.ids or sys.stdin.read().split()
    try:
        values = [int(i) for i in ids]
    except ValueError:
        raise ConfigError(f"decode takes integer ids, got {' '.join(ids[:5])!r}") from None
    tokenizer = load_tokenizer(args.tokenizer)
    bad = next((i for i in values if not 0 <= i < tokenizer.vocab_size), None)
    if bad is not None:
        raise ConfigError(f"id {bad} is outside the vocabulary of {args.tokenizer} (0..{tokenizer.vocab_size - 1})")
    sys.stdout.write(tokenizer.decode(values))


def _progress(label: str, unit: str):
    """A callback printing `label: done/total unit` to stderr about ten times over a long evaluation."""
    last = [-1]

    def report(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            print(f"{label}: {done}/{total} {unit}", file=sys.stderr)

    return report


def _report(name: str, run_dir: str, step: int, figures: dict, out: str | None) -> None:
    """Print the figures as `key value` lines and, with --out, write them as JSON."""
    import json

    print(f"# {name} of {run_dir} (step {step})")
    for key, value in figures.items():
        print(f"{key:>14} {value:.6g}" if isinstance(value, float) else f"{key:>14} {value}")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"eval": name, "run": run_dir, "step": step, **figures}, f, indent=1)
        print(f"wrote {out}", file=sys.stderr)


def _eval_perplexity(args: argparse.Namespace) -> None:
    from jaxllm.evaluate.perplexity import perplexity, read_texts
    from jaxllm.train.load import load_run, load_run_tokenizer

    texts = read_texts(args.data, args.field)
    cfg, params, step = load_run(args.run_dir)
    result = perplexity(
        cfg, params, load_run_tokenizer(cfg), texts, args.stride, args.batch_size, _progress("perplexity", "windows")
    )
    _report("perplexity", args.run_dir, step, result.as_dict(), args.out)


def _eval_mc(args: argparse.Namespace) -> None:
    from jaxllm.evaluate.multiple_choice import evaluate_mc, read_mc
    from jaxllm.train.load import load_run, load_run_tokenizer

    examples = read_mc(args.data, args.limit)
    cfg, params, step = load_run(args.run_dir)
    result = evaluate_mc(cfg, params, load_run_tokenizer(cfg), examples, args.batch_size, _progress("mc", "choices"))
    _report("mc", args.run_dir, step, result.as_dict(), args.out)


def _eval_exact_match(args: argparse.Namespace) -> None:
    from jaxllm.errors import DataError
    from jaxllm.posttrain.data import load_records
    from jaxllm.posttrain.synthetic import exact_match
    from jaxllm.train.load import load_run, load_run_tokenizer

    records = load_records(args.data)
    records = records[: args.limit] if args.limit > 0 else records
    missing = next((i for i, r in enumerate(records) if not isinstance(r.get("output"), str)), None)
    if missing is not None:
        raise DataError(f"{args.data}: record {missing} has no string 'output' to grade against; give Alpaca records")
    cfg, params, step = load_run(args.run_dir)
    scores = exact_match(cfg, params, load_run_tokenizer(cfg), records, args.batch_size, args.max_new_tokens)
    _report("exact-match", args.run_dir, step, {"records": len(records), **scores}, args.out)


def _data_synthetic(args: argparse.Namespace) -> None:
    import json

    from jaxllm.errors import DataError
    from jaxllm.posttrain.synthetic import KINDS, make_preference_records, make_records

    if args.kind == "cloze":
        from jaxllm.evaluate.cloze import make_cloze
        from jaxllm.posttrain.data import read_utf8

        if not args.file:
            raise DataError("cloze records are cut from a text file; name one with --file")
        if not 0 < args.tail <= 1:
            raise DataError(f"--tail {args.tail}: give the fraction of the file to use, in (0, 1], e.g. 0.1")
        text = read_utf8(args.file, "--file")
        text = text[int(len(text) * (1 - args.tail)) :]
        try:
            records = make_cloze(text, args.n, args.choices, args.seed, args.distractors)
        except ValueError as e:
            raise DataError(f"{args.file}: {e}") from None
    else:
        bad = [k for k in args.kinds if k not in KINDS]
        if bad:
            raise DataError(f"--kinds {' '.join(bad)}: unknown; choose from {', '.join(KINDS)}")
        from jaxllm.posttrain.data import load_records

        exclude = set()
        for path in args.exclude:
            if not Path(path).is_file():
                raise DataError(f"--exclude {path}: no such file")
            exclude |= {(r.get("instruction"), r.get("input")) for r in load_records(path)}
        # Draw more until dropping the excluded prompts still leaves n records (the same seed
        # always gives the same leading records, so the result depends on (n, seed, exclude) only).
        draw, records = args.n, []
        while len(records) < args.n:
            if draw > 100 * (args.n + len(exclude)):
                raise DataError(f"--exclude leaves too few distinct prompts for --n {args.n}; lower --n")
            if args.kind == "preferences":
                pool = make_preference_records(draw, args.seed, args.kinds, args.off_task)
            else:
                pool = make_records(draw, args.seed, args.kinds)
            records = [r for r in pool if (r["instruction"], r["input"]) not in exclude][: args.n]
            draw *= 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {len(records):,} {args.kind} records to {args.out}; e.g. {json.dumps(records[0])}")


def _eval_harness(args: argparse.Namespace) -> int:
    try:
        from jaxllm.evaluate.harness import main as harness_main
    except ImportError as e:
        raise ConfigError(f"the lm-evaluation-harness is not installed ({e}); pip install -e '.[eval]'") from None
    return harness_main(args.extra)


def _convert_from_hf(args: argparse.Namespace) -> None:
    from jaxllm.convert.hf import import_hf

    print(f"wrote {import_hf(args.hf_dir, args.out)}")


def _convert_to_hf(args: argparse.Namespace) -> None:
    from jaxllm.convert.hf import export_hf

    out = export_hf(args.run_dir, args.out, max_shard_size=int(args.max_shard_mb * 2**20), dtype=args.dtype)
    print(f"wrote {out}")


def _plan(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    import jax

    # Planning compiles for the target's devices (fake TPU ones from libtpu, or host CPU
    # ones): no accelerator backend of this host is needed, and none is started.
    try:  # only possible before the first JAX computation (in a notebook the devices are what they are)
        jax.config.update("jax_platforms", "cpu")
        if args.topology.startswith("cpu:") and args.topology[4:].isdigit():
            jax.config.update("jax_num_cpu_devices", max(int(args.topology[4:]), 1))
    except RuntimeError:
        pass
    from jaxllm.plan import get_topology, plan

    topology = get_topology(args.topology, args.slices)
    print(f"# planning {args.config} for {topology.name}: compiling the train step ahead of time", file=sys.stderr)
    result = plan(cfg, topology, hbm_bytes=args.hbm_gib * 2**30 if args.hbm_gib else None)
    print(result.table())
    return 0 if result.fits is not False else 3


OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+=")
TOKENIZER_HELP = "'byte', a sentencepiece .model, a scratch BPE .json or an HF tokenizer.json"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="jaxllm", description="Build, train and evaluate decoder LMs in JAX.")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error ({DEBUG_ENV}=1 too)")
    verbs = parser.add_subparsers(dest="verb", required=True)

    config = verbs.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved, validated config as YAML")
    _config_args(show)
    show.set_defaults(func=_config_show)

    model = verbs.add_parser("model", help="inspect models").add_subparsers(dest="action", required=True)
    summary = model.add_parser("summary", help="parameters, FLOPs/token and memory, without allocating")
    _config_args(summary)
    summary.add_argument("--seq-len", action=positive(), help="context for the attention FLOPs (data.seq_len)")
    summary.set_defaults(func=_model_summary)

    data = verbs.add_parser("data", help="fetch and prepare corpora").add_subparsers(dest="action", required=True)
    fetch = data.add_parser("fetch", help="download a registered corpus and verify its checksum")
    fetch.add_argument("name", help="tinyshakespeare | shakespeare")
    fetch.add_argument("--out", required=True, help="directory to put it in")
    fetch.add_argument("--from", dest="from_dir", default=None, help="copy from a local directory instead")
    fetch.set_defaults(func=_data_fetch)
    prep = data.add_parser("prepare", help="clean, filter, dedup and tokenize data.inputs into shards at data.path")
    _config_args(prep)
    prep.set_defaults(func=_data_prepare)
    syn = data.add_parser(
        "synthetic",
        help="tasks with checkable answers: instructions, preference pairs, or cloze multiple choice (JSONL)",
        description="instructions: reverse a word, add two numbers, uppercase a phrase (Alpaca records with the "
        "answer in 'output'); preferences: the same with chosen = the answer, rejected = a near miss (or, with "
        "--off-task, another task's answer); cloze: lines of --file cut in two, the true ending among --choices "
        "endings of other lines (for `jaxllm eval mc`).",
    )
    syn.add_argument("kind", choices=("instructions", "preferences", "cloze"))
    syn.add_argument("--n", action=positive(), required=True, help="records to write")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--out", required=True, help="the JSONL file to write")
    syn.add_argument("--kinds", nargs="+", default=["reverse", "add", "upper"], help="instruction tasks to cycle")
    syn.add_argument("--off-task", action=bounded(float, 0, 1), default=0.0,
                     help="preferences: share rejected by an off-task answer")  # fmt: skip
    syn.add_argument("--exclude", nargs="*", default=[], help="JSONL files whose prompts must not recur (held out)")
    syn.add_argument("--file", default=None, help="cloze: the text to cut lines from")
    syn.add_argument("--tail", type=float, default=1.0, help="cloze: use only the last fraction of --file (0..1]")
    syn.add_argument("--choices", type=int, default=4, help="cloze: choices per record")
    syn.add_argument("--distractors", choices=("lines", "shuffled"), default="lines",
                     help="cloze: wrong endings are other lines' endings, or the true ending's words shuffled")
    syn.set_defaults(func=_data_synthetic)
    verify = data.add_parser("verify", help="check every shard of data.path against its manifest checksum")
    _config_args(verify)
    verify.set_defaults(func=_data_verify)

    train = verbs.add_parser("train", help="train (or resume) a model; prepares missing data first")
    _config_args(train)
    _multiprocess_args(train)
    _reset_arg(train)
    train.set_defaults(func=_train)
    quick = verbs.add_parser("quickstart", help="fetch, tokenize, prepare, train and sample tiny Shakespeare")
    quick.add_argument("--out", default="runs/quickstart", help="where everything goes")
    quick.add_argument("--steps", action=positive(), default=None, help="train steps (default: the recipe's 2000)")
    quick.add_argument("--from", dest="from_dir", default=None, help="a local folder holding tinyshakespeare.txt")
    quick.set_defaults(func=_quickstart)
    smp = verbs.add_parser("sample", help="stream continuations of a prompt from a trained run")
    _sampling_args(smp, max_new_tokens=300, temperature=0.8)
    smp.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    smp.add_argument("--escapes", action="store_true", help="read \\n, \\t, ... in --prompt as escapes")
    smp.add_argument("--stop", action="append", default=[], help="end the sample at this text (repeatable)")
    smp.add_argument("--num-samples", action=positive(), default=1, help="this many samples, seeds seed, seed+1, ...")
    smp.add_argument("overrides", nargs="*", help="a.b.c=value over the run's config.yaml, e.g. model.dtype=bfloat16")
    smp.set_defaults(func=_sample)
    chat = verbs.add_parser("chat", help="talk to an instruction-tuned run (its chat template); /reset, /exit")
    _sampling_args(chat, max_new_tokens=256, temperature=0.7)
    chat.add_argument("--system", default=None, help="a system message opening the conversation")
    chat.add_argument("overrides", nargs="*", help="a.b.c=value over config.yaml, e.g. chat.default_system=Hi")
    chat.set_defaults(func=_chat)
    sft = verbs.add_parser(
        "sft", help="instruction-tune: loss on replies only; SOURCE is a run directory (its weights) or a config"
    )
    sft.add_argument("source", help="a run directory to start from, or a preset / YAML (random init)")
    sft.add_argument("overrides", nargs="*", help="a.b.c=value, e.g. posttrain.data=instructions.json train.steps=200")
    _multiprocess_args(sft)
    _reset_arg(sft)
    sft.set_defaults(func=_sft)
    for verb, func, help_, source, example in (
        ("dpo", _dpo, "direct preference optimization on chosen/rejected pairs",
         "the run to start from and keep as the reference (e.g. an SFT run)",
         "e.g. posttrain.data=prefs.json posttrain.beta=0.1 train.steps=100"),
        ("reward", _reward, "train a reward model (scalar head, Bradley-Terry) on chosen/rejected pairs",
         "a run whose backbone starts the reward model (e.g. an SFT run)",
         "e.g. posttrain.data=prefs.json posttrain.reward_center=0.01"),
        ("ppo", _ppo, "RLHF: PPO against a reward model, with a critic and a KL leash to the start",
         "the policy to start from and keep as the reference (e.g. an SFT run)",
         "e.g. ppo.reward_from=RM_RUN posttrain.data=prompts.json"),
    ):  # fmt: skip
        posttrain = verbs.add_parser(verb, help=help_)
        posttrain.add_argument("source", help=source)
        posttrain.add_argument("overrides", nargs="*", help=example)
        _reset_arg(posttrain)
        posttrain.set_defaults(func=func)
    ev = verbs.add_parser("eval", help="evaluate a run").add_subparsers(dest="action", required=True)
    ppl = ev.add_parser("perplexity", help="loss, perplexity and bits-per-byte of text, in rolling windows")
    ppl.add_argument("run_dir")
    ppl.add_argument("--data", required=True, help=".txt (one document), .jsonl/.json records or a dir of .txt")
    ppl.add_argument("--field", default="text", help="the text field of .jsonl/.json records")
    ppl.add_argument("--stride", action=positive(), help="new tokens scored per window (default: the context)")
    ppl.add_argument("--batch-size", action=positive(), default=16, help="windows per forward pass")
    ppl.add_argument("--out", default=None, help="also write the figures as JSON here")
    ppl.set_defaults(func=_eval_perplexity)
    mc = ev.add_parser("mc", help="multiple choice by log-likelihood: acc and acc_norm (HellaSwag-format JSONL)")
    mc.add_argument("run_dir")
    mc.add_argument("--data", required=True, help="JSONL: HellaSwag records or {context, choices, label}")
    mc.add_argument("--limit", action=non_negative(), default=0, help="only the first N examples (0: all)")
    mc.add_argument("--batch-size", action=positive(), default=16, help="choices per forward pass")
    mc.add_argument("--out", default=None, help="also write the figures as JSON here")
    mc.set_defaults(func=_eval_mc)
    em = ev.add_parser("exact-match", help="greedy replies of an instruction-tuned run vs records' 'output'")
    em.add_argument("run_dir")
    em.add_argument("--data", required=True, help="Alpaca records (.json/.jsonl) with the expected 'output'")
    em.add_argument("--limit", action=non_negative(), default=0, help="only the first N records (0: all)")
    em.add_argument("--batch-size", action=positive(), default=64, help="prompts per generate call")
    em.add_argument("--max-new-tokens", action=positive(), default=16)
    em.add_argument("--out", default=None, help="also write the figures as JSON here")
    em.set_defaults(func=_eval_exact_match)
    harness = ev.add_parser(
        "harness",
        help="lm-evaluation-harness with jaxllm registered: --model jaxllm --model_args path=RUN_DIR --tasks ...",
    )
    harness.set_defaults(func=_eval_harness, passthrough=True)  # every other argument goes to the harness

    convert = verbs.add_parser("convert", help="Hugging Face import/export").add_subparsers(
        dest="action", required=True
    )
    from_hf = convert.add_parser("from-hf", help="a Hugging Face model dir (config.json + safetensors) -> a run dir")
    from_hf.add_argument("hf_dir")
    from_hf.add_argument("out", help="the run directory to write")
    from_hf.set_defaults(func=_convert_from_hf)
    to_hf = convert.add_parser("to-hf", help="a run's newest weights -> config.json + safetensors (+ tokenizer)")
    to_hf.add_argument("run_dir")
    to_hf.add_argument("out", help="the Hugging Face model directory to write")
    to_hf.add_argument("--max-shard-mb", action=positive(float), default=4096,
                       help="split the safetensors above this size")  # fmt: skip
    to_hf.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights as stored")
    to_hf.set_defaults(func=_convert_to_hf)

    pl = verbs.add_parser("plan", help="compile the train step for a topology ahead of time: memory, fit, FLOPs, MFU")
    _config_args(pl)
    pl.add_argument("--topology", required=True, help="cpu:N, v4-N, v5p-N, v5e-N, v6e-N or GEN:AxBxC, e.g. v5p-128")
    pl.add_argument("--slices", action=positive(), default=1, help="TPU slices joined over DCN (multi-slice)")
    pl.add_argument("--hbm-gib", action=positive(float), help="memory per device to check against (default: chip's)")
    pl.set_defaults(func=_plan)
    plot = verbs.add_parser("plot", help="PNG of a run's train/val loss and throughput")
    plot.add_argument("run_dir")
    plot.add_argument("--out", default=None, help="output PNG (default RUN_DIR/metrics.png)")
    plot.set_defaults(func=_plot)

    viz = verbs.add_parser("viz", help="pictures: attention maps, tokenization, mesh shards").add_subparsers(
        dest="what", required=True
    )
    va = viz.add_parser("attention", help="attention maps of a prompt, per layer and head (PNG)")
    va.add_argument("run_dir")
    va.add_argument("--prompt", required=True)
    va.add_argument("--layer", action=non_negative(), nargs="+", default=None, help="layers to draw (default: all)")
    va.add_argument("--head", action=non_negative(), nargs="+", default=None, help="heads to draw (default: all)")
    va.add_argument("--across-checkpoints", action="store_true",
                    help="one head (first --layer/--head, default 0/0) at every saved checkpoint")  # fmt: skip
    va.add_argument("--out", default=None, help="output PNG (default RUN_DIR/attention.png)")
    va.set_defaults(func=_viz_attention)
    vt = viz.add_parser("tokens", help="a text with its token boundaries coloured (PNG)")
    vt.add_argument("--tokenizer", required=True, help=TOKENIZER_HELP)
    source = vt.add_mutually_exclusive_group(required=True)
    source.add_argument("--text")
    source.add_argument("--file")
    vt.add_argument("--max-chars", action=positive(), default=400, help="with --file: its first N characters")
    vt.add_argument("--width", action=positive(), default=60, help="characters per line")
    vt.add_argument("--out", default="tokens.png")
    vt.set_defaults(func=_viz_tokens)
    vm = viz.add_parser("mesh", help="which device holds which shard of a parameter (PNG)")
    _config_args(vm)
    vm.add_argument("--param", default="blocks.mlp.up_proj.kernel", help="dotted parameter name")
    vm.add_argument("--devices", type=int, default=8, help="device count the mesh spans")
    vm.add_argument("--out", default="mesh.png")
    vm.set_defaults(func=_viz_mesh)

    tok = verbs.add_parser("tokenizer", help="train and use tokenizers").add_subparsers(dest="action", required=True)
    tok_train = tok.add_parser("train", help="train a sentencepiece model on data.inputs, written to tokenizer.path")
    _config_args(tok_train)
    tok_train.set_defaults(func=_tokenizer_train)
    enc = tok.add_parser("encode", help="print the token ids of TEXT (or stdin)")
    enc.add_argument("--tokenizer", default="byte", help=TOKENIZER_HELP)
    enc.add_argument("text", nargs="?", default=None)
    enc.set_defaults(func=_tokenizer_encode)
    dec = tok.add_parser("decode", help="print the text of token IDS (or stdin)")
    dec.add_argument("--tokenizer", default="byte", help=TOKENIZER_HELP)
    dec.add_argument("ids", nargs="*")
    dec.set_defaults(func=_tokenizer_decode)
    cmp = tok.add_parser(
        "compare",
        help="train the from-scratch BPE and sentencepiece BPE at several vocab sizes; table of compression",
        description="Train jaxllm/data/bpe.py's BPE (V - 256 merges) and a sentencepiece BPE (vocab V, the "
        "settings of `jaxllm tokenizer train`) on the text minus its last --heldout fraction, then measure "
        "bytes/token on the held-out and training parts, encode speed and decode(encode(x)) == x. Prints a "
        "Markdown table; progress goes to stderr.",
    )
    cmp.add_argument("--file", required=True, help="UTF-8 text file, e.g. ../shared/data/tinyshakespeare.txt")
    cmp.add_argument(
        "--vocab-sizes",
        type=int,
        nargs="+",
        required=True,
        metavar="V",
        help="vocabulary sizes, each > 256 (sentencepiece: > 256 bytes + 8 special + the characters)",
    )
    cmp.add_argument(
        "--impl",
        nargs="+",
        choices=("scratch", "sentencepiece"),
        default=["scratch", "sentencepiece"],
        help="which implementations to train (default: both)",
    )
    cmp.add_argument("--heldout", type=float, default=0.1, help="fraction held out at the end of the text (0..1)")
    cmp.add_argument(
        "--out-dir",
        default=None,
        help="keep the tokenizers: DIR/sp-V.model (for `viz tokens --tokenizer`, tokenizer.path) and "
        "DIR/scratch-V.json (the from-scratch BPE; also a tokenizer.path)",
    )
    cmp.add_argument("--json", default=None, metavar="OUT.json", help="also write the rows as a JSON list")
    cmp.set_defaults(func=_tokenizer_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jaxllm` console script (and of `python -m jaxllm.cli`).

    Every error, Ctrl-C included, ends as one line on stderr and an exit code (2; 130 for
    Ctrl-C): see jaxllm/cli/report.py. `--debug` or JAXLLM_DEBUG=1 re-raises instead, for
    the traceback. Usage errors (no verb, an unknown option) exit 2 through SystemExit.
    """
    restore_interrupts()  # from here Ctrl-C is a KeyboardInterrupt, reported below
    debug = debug_requested()
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        passthrough = getattr(args, "passthrough", False)
        if "--debug" in extra and not passthrough:  # accepted after the verb too
            extra = [x for x in extra if x != "--debug"]
            args.debug = True
        debug = debug_requested(args.debug)
        if extra and isinstance(getattr(args, "overrides", None), list) and not passthrough:
            # argparse ends a positional list at the first option, so `plan CONFIG --topology T
            # a.b=c` leaves a.b=c over; overrides are recognisable (section.key=value) wherever they sit.
            args.overrides += [x for x in extra if OVERRIDE.match(x)]
            extra = [x for x in extra if not OVERRIDE.match(x)]
        if extra and not passthrough:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
        from jaxllm.host import enable_compilation_cache

        enable_compilation_cache()  # compiled programs persist across commands: jaxllm/host.py
        code = args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        if debug:
            raise
        return report(e)
    return code if isinstance(code, int) else 0

