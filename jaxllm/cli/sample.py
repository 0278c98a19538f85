"""`jaxllm sample` and `jaxllm chat`: text from a trained run, streamed as it is generated."""

from __future__ import annotations

import argparse

from jaxllm.cli.args import bounded, non_negative, positive


def _sample(args: argparse.Namespace) -> None:
    from jaxllm.interactive import run_sample  # slow import (jax, the run's weights)

    run_sample(args)


def _chat(args: argparse.Namespace) -> None:
    from jaxllm.interactive import run_chat  # slow import (jax, the run's weights)

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


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `sample` and `chat` to the `jaxllm` verbs."""
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
