"""GRPO's rewards: a function of (record, reply) or a reward model, and the prompts they need.

A rule-based reward (`grpo.reward`) judges a reply against its prompt's record, so every
tokenized prompt keeps its record beside it (`PromptItem`). "exact_match" is built in (the
reply up to the chat template's stop string, stripped, equals the record's `output`: 1.0,
else 0.0: the synthetic tasks of jaxllm/posttrain/synthetic.py); "module:function" names any
importable `function(record, reply) -> float`. With `grpo.reward_from` a reward model (a run
of `jaxllm reward`) scores instead: its value at the reply's last token, the stop string,
where it was trained to judge a conversation (jaxllm/posttrain/reward.py).

Every process scores the whole rollout alike (the same replies, the same deterministic
function or the same jitted forward), as PPO's rollouts do (jaxllm/posttrain/rollout.py).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jaxllm.chat import stop_string
from jaxllm.config import Config, ConfigError
from jaxllm.errors import DataError
from jaxllm.parallel.layout import Layout
from jaxllm.posttrain.data import load_records, prompt_messages, split_records, tokenize_prompt
from jaxllm.posttrain.reward import last_token_rewards
from jaxllm.posttrain.rollout import Rollout
from jaxllm.train.load import load_run, load_run_tokenizer

RewardFn = Callable[[Mapping[str, Any], str], float]


@dataclass(frozen=True)
class PromptItem:
    """A tokenized prompt (the conversation plus the assistant's opening) and its record."""

    ids: list[int]
    record: dict


def exact_match(record: Mapping[str, Any], reply: str) -> float:
    """1.0 when the reply, stripped, equals the record's `output`, else 0.0."""
    return 1.0 if reply.strip() == str(record["output"]).strip() else 0.0


def reward_function(spec: str) -> RewardFn:
    """The function grpo.reward names: "exact_match" or "module:function"."""
    if spec == "exact_match":
        return exact_match
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(f"grpo.reward={spec!r} is neither 'exact_match' nor 'module:function' "
                          "(e.g. grpo.reward=my_rewards:score); or set grpo.reward_from=RM_RUN")  # fmt: skip
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"grpo.reward={spec!r}: module {module_name!r} cannot be imported ({e}); put it on "
                          "PYTHONPATH or fix the name") from None  # fmt: skip
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"grpo.reward={spec!r}: {module_name} has no function {name!r}; give an existing "
                          "function(record, reply) -> float")  # fmt: skip
    return fn


def load_prompt_items(cfg: Config, tokenizer) -> tuple[list[PromptItem], list[PromptItem]]:
    """Train and held-out prompts of posttrain.data (the held-out ones cut to grpo.eval_prompts),
    each with its record; prompts leaving no room for a reply are dropped."""
    pt = cfg.posttrain
    needs_output = not cfg.grpo.reward_from and cfg.grpo.reward == "exact_match"
    records = load_records(pt.data)
    for i, r in enumerate(records):
        if needs_output and not isinstance(r.get("output"), str):
            raise DataError(f"{pt.data} record {i} has no string 'output' for grpo.reward=exact_match to compare "
                            "with; give Alpaca records with answers, or another grpo.reward")  # fmt: skip
    splits = split_records(records, pt.val_fraction, cfg.train.seed)
    items: list[list[PromptItem]] = [[], []]
    for out, recs in zip(items, splits, strict=True):
        for i, r in enumerate(recs):
            ids = tokenize_prompt(tokenizer, cfg.chat, prompt_messages(r, f"{pt.data} record {i}"))
            if len(ids) < cfg.model.max_seq_len:
                out.append(PromptItem(ids, r))
    if not items[0]:
        raise DataError(f"no prompt of {pt.data} fits the context (model.max_seq_len={cfg.model.max_seq_len}) with "
                        "room for a reply")  # fmt: skip
    return items[0], items[1][: cfg.grpo.eval_prompts]


class Rewards:
    """Scores a rollout's replies: `rewards(records, rollout) -> (N,) float64`."""

    def __init__(self, cfg: Config, layout: Layout, tokenizer, log: Callable[[str], None]):
        self.tokenizer, self.stop = tokenizer, stop_string(cfg.chat)
        self.fn: RewardFn | None = None
        if cfg.grpo.reward_from:
            self._load_model(cfg, layout, log)
        else:
            self.fn = reward_function(cfg.grpo.reward)
            log(f"grpo: reward {cfg.grpo.reward}")

    def _load_model(self, cfg: Config, layout: Layout, log: Callable[[str], None]) -> None:
        src = cfg.grpo.reward_from
        rm_cfg, self.rm_params, step = load_run(src, layout=layout)
        if rm_cfg.model.head != "scalar":
            raise ConfigError(f"grpo.reward_from={src!r} is not a reward model (its model.head is not scalar); "
                              "give a run of `jaxllm reward`")  # fmt: skip
        rm_tokenizer = load_run_tokenizer(rm_cfg)
        probes = ("Hello, world!", self.stop)
        if rm_tokenizer.vocab_size != self.tokenizer.vocab_size or any(
            rm_tokenizer.encode(s).tolist() != self.tokenizer.encode(s).tolist() for s in probes
        ):
            raise ConfigError(f"grpo.reward_from={src!r} uses another tokenizer than the policy; it scores the "
                              "sampled tokens directly, so train the reward model from the same base run")  # fmt: skip
        rm_cfg = dataclasses.replace(rm_cfg, model=dataclasses.replace(rm_cfg.model, dropout=0.0,
                                                                       attention_dropout=0.0))  # fmt: skip
        log(f"grpo: reward model {src} (step {step})")

        def score(params, seq, last):
            with layout.activations():
                return last_token_rewards(rm_cfg, params, seq, last)

        jitted = jax.jit(score, out_shardings=layout.replicated)

        def run(rollout: Rollout) -> np.ndarray:
            with jax.set_mesh(layout.mesh):
                b = layout.put({"seq": rollout.seq, "last": rollout.last})
                return np.asarray(jax.device_get(jitted(self.rm_params, b["seq"], b["last"])), np.float64)

        self.model_score = run

    def replies(self, rollout: Rollout) -> list[str]:
        """The decoded replies up to the stop string."""
        return [self.tokenizer.decode(r).split(self.stop)[0] for r in rollout.replies]

    def __call__(self, records: list[dict], rollout: Rollout) -> np.ndarray:
        if self.fn is None:
            return self.model_score(rollout)[: len(records)]
        out = np.zeros(len(records), np.float64)
        for i, (record, reply) in enumerate(zip(records, self.replies(rollout), strict=True)):
            value = self.fn(record, reply)
            if not isinstance(value, int | float | np.number) or not math.isfinite(float(value)):
                raise DataError(f"the reward function {getattr(self.fn, '__name__', self.fn)!r} returned {value!r} "
                                f"for reply {reply!r}; it must return a finite number")  # fmt: skip
            out[i] = float(value)
        return out
