"""`jaxllm sft | dpo | reward | ppo | grpo`: post-training verbs, each starting from a run directory
(its weights) or a config, and exiting as `jaxllm train` does."""

from __future__ import annotations

import argparse
from typing import Any

from jaxllm.cli.training import joined, multiprocess_args, reset_arg


def _exit_code(result: Any) -> int:
    """0, or 128 + the signal that stopped a post-training run (as `jaxllm train` does)."""
    return 128 + result.interrupted if result.interrupted is not None else 0


def _sft(args: argparse.Namespace) -> int:
    from jaxllm.posttrain.sft import sft, sft_config  # slow import (jax, optax)

    cfg = sft_config(args.source, args.overrides)
    return joined(args, lambda: _exit_code(sft(cfg, reset=args.reset)))


def _dpo(args: argparse.Namespace) -> int:
    from jaxllm.posttrain.dpo import dpo  # slow import (jax, optax)
    from jaxllm.posttrain.sft import sft_config  # slow import (jax, optax)

    cfg = sft_config(args.source, args.overrides, suffix="dpo")
    return joined(args, lambda: _exit_code(dpo(cfg, reset=args.reset)[0]))


def _reward(args: argparse.Namespace) -> int:
    from jaxllm.posttrain.reward import reward  # slow import (jax, optax)
    from jaxllm.posttrain.sft import sft_config  # slow import (jax, optax)

    cfg = sft_config(args.source, [*args.overrides, "model.head=scalar"], suffix="reward")
    return joined(args, lambda: _exit_code(reward(cfg, reset=args.reset)[0]))


def _ppo(args: argparse.Namespace) -> int:
    from jaxllm.posttrain.ppo_loop import ppo  # slow import (jax, optax)
    from jaxllm.posttrain.sft import sft_config  # slow import (jax, optax)

    cfg = sft_config(args.source, args.overrides, suffix="ppo")
    return joined(args, lambda: _exit_code(ppo(cfg, reset=args.reset)))


def _grpo(args: argparse.Namespace) -> int:
    from jaxllm.posttrain.grpo_loop import grpo  # slow import (jax, optax)
    from jaxllm.posttrain.sft import sft_config  # slow import (jax, optax)

    cfg = sft_config(args.source, args.overrides, suffix="grpo")
    return joined(args, lambda: _exit_code(grpo(cfg, reset=args.reset)))


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `sft`, `dpo`, `reward`, `ppo` and `grpo` to the `jaxllm` verbs."""
    sft = verbs.add_parser(
        "sft", help="instruction-tune: loss on replies only; SOURCE is a run directory (its weights) or a config"
    )
    sft.add_argument("source", help="a run directory to start from, or a preset / YAML (random init)")
    sft.add_argument("overrides", nargs="*", help="a.b.c=value, e.g. posttrain.data=instructions.json train.steps=200")
    multiprocess_args(sft)
    reset_arg(sft)
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
        ("grpo", _grpo, "GRPO: groups of sampled replies per prompt, rewarded against their group's mean; no critic",
         "the policy to start from and keep as the reference (e.g. an SFT run)",
         "e.g. posttrain.data=tasks.json grpo.reward=exact_match grpo.group_size=8"),
    ):  # fmt: skip
        posttrain = verbs.add_parser(verb, help=help_)
        posttrain.add_argument("source", help=source)
        posttrain.add_argument("overrides", nargs="*", help=example)
        multiprocess_args(posttrain)
        reset_arg(posttrain)
        posttrain.set_defaults(func=func)
