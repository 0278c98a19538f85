"""EleutherAI lm-evaluation-harness adapter: `--model jaxllm --model_args path=RUN_DIR`.

Importing this module registers the model class under the name "jaxllm" (the
harness keeps a registry of model classes and offers no plugin hook for outside
packages, so the registration happens on import). Run it through
`jaxllm eval harness ...` (the harness's own command line, with jaxllm registered)
or from Python with `lm_eval.simple_evaluate(model="jaxllm", ...)` after
`import jaxllm.evaluate.harness`.

The three request types map onto jaxllm's own evaluation code, so the harness and
`jaxllm eval mc` / `jaxllm eval perplexity` give the same numbers on the same data:
  loglikelihood          choice_logprobs (the scorer behind `eval mc`)
  loglikelihood_rolling  document_logprobs (the rolling windows of `eval perplexity`)
  generate_until         jaxllm.generate (KV cache), cut at the first stop string
Needs the optional extra: pip install -e ".[eval]".
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from jaxllm.config import ConfigError
from jaxllm.evaluate.multiple_choice import choice_logprobs
from jaxllm.evaluate.perplexity import document_logprobs
from jaxllm.evaluate.scoring import document_start
from jaxllm.generation import generate
from jaxllm.train.load import load_run, load_run_tokenizer


def _int_or(value, default: int) -> int:
    """The harness passes numbers as strings, and batch_size may be "auto"."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@register_model("jaxllm")
class JaxLLM(LM):
    """A jaxllm run directory (its newest checkpoint and tokenizer) as a harness model.

    model_args: path (required), stride (rolling-window stride for
    loglikelihood_rolling; default the context length), max_gen_toks (default 256,
    when a task gives none). The harness's own --batch_size sets the rows per forward
    pass (default 16).
    """

    def __init__(self, path: str = "", batch_size=16, stride=None, max_gen_toks=256, **unused):
        super().__init__()
        if not path:
            raise ValueError("jaxllm needs model_args path=RUN_DIR (a directory written by jaxllm train/sft/convert)")
        self.config, self.params, self.step = load_run(path)
        self.tokenizer = load_run_tokenizer(self.config)
        self.path = path
        self.batch_size = _int_or(batch_size, 16)
        self.stride = _int_or(stride, 0) or None
        self.max_gen_toks = _int_or(max_gen_toks, 256)
        self.max_len = self.config.model.max_seq_len
        ignored = sorted(k for k in unused if k not in ("device", "max_batch_size"))
        if ignored:
            print(f"jaxllm: ignoring model_args {', '.join(ignored)}", file=sys.stderr)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.identity

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args[:2]) for r in requests]
        return choice_logprobs(self.config, self.params, self.tokenizer, pairs, self.batch_size)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        docs = [[int(t) for t in self.tokenizer.encode(r.args[0])] for r in requests]
        logprobs, _ = document_logprobs(
            self.config, self.params, docs, document_start(self.tokenizer), self.stride, self.batch_size
        )
        return logprobs

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list[str] = []
        for r in requests:  # one at a time: each request may bring its own stop strings and length
            context, kwargs = r.args[0], dict(r.args[1] if len(r.args) > 1 else {})
            out.append(self._generate_one(context, kwargs))
        return out

    def _generate_one(self, context: str, kwargs: dict) -> str:
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = _int_or(kwargs.pop("max_gen_toks", None), self.max_gen_toks)
        temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
        ids = [int(t) for t in self.tokenizer.encode(context)] or [document_start(self.tokenizer)]
        ids = ids[-max(1, self.max_len - max_new) :]  # leave room for the reply inside the context
        result = generate(
            self.config,
            self.params,
            [ids],
            max_new,
            temperature=temperature,
            stop_tokens=[self.tokenizer.eos_id],
            vocab_limit=min(self.tokenizer.vocab_size, self.config.model.vocab_size),
        )
        text = self.tokenizer.decode(result.tokens[0])
        return _cut(text, until)


def _cut(text: str, until: Sequence[str]) -> str:
    """Text up to the earliest stop string (the stop string itself dropped)."""
    ends = [text.find(s) for s in until if s and s in text]
    return text[: min(ends)] if ends else text


def _flag(argv: Sequence[str], name: str) -> str | None:
    """The value of `name VALUE` or `name=VALUE` in argv (the last one wins), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1 :]
    return value


def check_jaxllm_args(argv: Sequence[str]) -> None:
    """With `--model jaxllm`, refuse a missing or wrong model_args path before the harness
    spends its seconds indexing every task (it builds the model only after that)."""
    if _flag(argv, "--model") != "jaxllm":
        return
    model_args = _flag(argv, "--model_args") or ""
    path = dict(kv.split("=", 1) for kv in model_args.split(",") if "=" in kv).get("path", "").strip()
    if not path:
        raise ConfigError(f"--model jaxllm needs --model_args path=RUN_DIR (got {model_args!r}); name a run "
                          "directory written by jaxllm train, sft or convert")  # fmt: skip
    if not Path(path).is_dir():
        raise ConfigError(f"--model_args path={path}: no such run directory; name one written by jaxllm train, "
                          "sft or convert")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """The harness's command line with jaxllm registered (`jaxllm eval harness ...`)."""
    from lm_eval._cli import HarnessCLI  # slow import (the harness's task registry): only this command needs it
    from lm_eval.utils import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    check_jaxllm_args(argv)
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]  # the harness's parser reads sys.argv itself
    try:
        setup_logging()
        cli = HarnessCLI()
        cli.execute(cli.parse_args())
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
