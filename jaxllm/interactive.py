"""The terminal front ends of generation: `jaxllm sample` and `jaxllm chat`.

Both stream: each token is printed as soon as the model produces it. Text is decoded
from all tokens so far and only the new suffix is printed, because a token can be half
a character (byte-level pieces of a UTF-8 sequence) or change how its neighbour
decodes; a trailing replacement character is held back until the next token completes
it. Stop strings are checked on the decoded text, since the same string can be
tokenized differently in context than on its own.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from jaxllm.chat import render, stop_string
from jaxllm.config import Config, apply_overrides, from_dict, to_dict
from jaxllm.data.tokenizer import encode_prompt
from jaxllm.generation import Generation, GenerationError, generate_stream
from jaxllm.model.api import model_config
from jaxllm.train.load import load_run, load_run_tokenizer


class TextStream:
    """Turns a growing list of token ids into printable text increments."""

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self._decode = decode
        self.tokens: list[int] = []
        self.text = ""  # what has been emitted so far

    def push(self, token: int) -> str:
        """Add a token; the text it completes ('' while a character is unfinished)."""
        self.tokens.append(token)
        full = self._decode(self.tokens)
        if full.endswith("\ufffd"):
            return ""
        new = full[len(self.text) :] if full.startswith(self.text) else full
        self.text = full
        return new

    def finish(self) -> str:
        """All the text, an unfinished (invalid) character at the end included."""
        self.text = self._decode(self.tokens)
        return self.text


def stream_text(
    cfg: Config,
    params,
    tokenizer,
    prompt_ids: list[int],
    max_new_tokens: int,
    sampling: dict,
    stop: Sequence[str],
    out: TextIO,
    overflow: str = "slide",
    stop_ids: Sequence[int] = (),
) -> tuple[str, str]:
    """Generate from one prompt, writing text to `out` as it comes: (text, finish reason).

    Ends at EOS or a stop token (stop_ids: a chat template's end-of-turn token; neither
    is printed), at the first stop string (not printed), or at max_new_tokens.
    """
    ends = {int(tokenizer.eos_id), *map(int, stop_ids)}
    stream = TextStream(tokenizer.decode)
    printed = 0
    hold = max((len(s) for s in stop), default=0)  # a stop string may be arriving: keep that much back
    reason = "length"
    vocab_limit = min(tokenizer.vocab_size, model_config(cfg).vocab_size)
    gen = generate_stream(
        cfg, params, [prompt_ids], max_new_tokens, stop_tokens=sorted(ends), vocab_limit=vocab_limit,
        overflow=overflow, **sampling,
    )  # fmt: skip
    for item in gen:
        if isinstance(item, Generation):
            reason = item.finish_reasons[0]
            break
        token = item[0]
        if token is None or token in ends:
            continue
        stream.push(token)
        text = stream.text
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            out.write(text[printed:cut])
            out.flush()
            gen.close()
            return text[:cut], "stop"
        safe = len(text) - hold
        if safe > printed:
            out.write(text[printed:safe])
            out.flush()
            printed = safe
    text = stream.finish()
    out.write(text[printed:])
    out.flush()
    return text, reason


def _load(args) -> tuple[Config, dict, int]:
    """The run's config (with the command's `a.b=c` overrides, e.g. chat.template=...), weights and step."""

    cfg, params, step = load_run(args.run_dir)
    overrides = list(getattr(args, "overrides", None) or ())
    if overrides:
        cfg = from_dict(apply_overrides(to_dict(cfg), overrides))
    return cfg, params, step


def sampling_kwargs(args) -> dict:
    return dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )


def run_sample(args, out: TextIO | None = None) -> None:
    """`jaxllm sample RUN_DIR --prompt ...`: stream continuations of a prompt."""
    out = out or sys.stdout
    if args.num_samples < 1:
        raise GenerationError(f"--num-samples={args.num_samples} must be at least 1")
    cfg, params, step = _load(args)
    tokenizer = load_run_tokenizer(cfg)
    prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    ids = encode_prompt(tokenizer, prompt)
    if not ids:
        raise GenerationError("the prompt encodes to no tokens; give some text, e.g. --prompt 'ROMEO:'")
    print(f"# {args.run_dir} step {step}", file=sys.stderr)
    kwargs = sampling_kwargs(args)
    for n in range(args.num_samples):
        if args.num_samples > 1:
            out.write(f"\n----- sample {n + 1}/{args.num_samples}\n")
        out.write(prompt)
        stream_text(cfg, params, tokenizer, ids, args.max_new_tokens, {**kwargs, "seed": args.seed + n}, args.stop, out)
        out.write("\n")


def run_chat(args, inp: TextIO | None = None, out: TextIO | None = None) -> None:
    """`jaxllm chat RUN_DIR`: a conversation on the terminal, rendered with the run's
    chat template. /reset clears the history, /exit (or end of input) quits."""
    inp = inp or sys.stdin
    out = out or sys.stdout
    cfg, params, step = _load(args)
    tokenizer = load_run_tokenizer(cfg)
    chat = cfg.chat
    if not chat.enabled and not chat.template:
        print(
            f"jaxllm: note: {args.run_dir} is not instruction-tuned (chat.enabled is false); using the default "
            "template, so replies are plain continuations. Instruction-tune it first for a real assistant.",
            file=sys.stderr,
        )
    system = args.system
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    # a Jinja template ends a reply with a token (e.g. <|im_end|>); the role templates with a string
    stop = [] if chat.template else [stop_string(chat)]
    stop_ids = stop_token_ids(tokenizer, chat.stop_tokens)
    kwargs = sampling_kwargs(args)
    interactive = inp.isatty() if hasattr(inp, "isatty") else False
    turn = 0
    while True:
        if interactive:
            out.write("you> ")
            out.flush()
        line = inp.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            history = history[:1] if system else []
            out.write("(history cleared)\n")
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        ids = _fit_history(cfg, tokenizer, chat, history, args.max_new_tokens)
        out.write("assistant> ")
        reply, _ = stream_text(cfg, params, tokenizer, ids, args.max_new_tokens, {**kwargs, "seed": args.seed + turn},
                               stop, out, overflow="stop", stop_ids=stop_ids)  # fmt: skip
        out.write("\n")
        out.flush()
        history.append({"role": "assistant", "content": reply.strip()})
        turn += 1


def stop_token_ids(tokenizer, names: Sequence[str]) -> list[int]:
    """Ids of the tokens named in chat.stop_tokens; a name the tokenizer lacks is an error
    (a reply would otherwise run on past the end of its turn)."""
    ids = []
    for name in names:
        found = [i for i in tokenizer.encode(name).tolist()]
        if len(found) != 1:
            raise GenerationError(
                f"chat.stop_tokens names {name!r}, which is not one token of this tokenizer; "
                "name the template's end-of-turn token, e.g. chat.stop_tokens='[\"<|im_end|>\"]'"
            )
        ids.append(int(found[0]))
    return ids


def _fit_history(cfg: Config, tokenizer, chat, history: list[dict[str, str]], max_new_tokens: int) -> list[int]:
    """Token ids of the rendered conversation, dropping the oldest turns (never the system
    message or the newest user message) until the reply has room in the context."""
    context = cfg.model.max_seq_len
    while True:
        # a Jinja template writes its own BOS (apply_chat_template adds none); the role templates get the tokenizer's
        ids = encode_prompt(tokenizer, render(chat, history, True, tokenizer), special_tokens=not chat.template)
        first = 1 if history and history[0]["role"] == "system" else 0
        if len(ids) + min(max_new_tokens, context // 4) <= context or len(history) - first <= 1:
            break
        del history[first : first + 2 if len(history) - first > 2 else first + 1]
    if len(ids) >= context:  # one message alone overflows: keep its end (the reply's opening is there)
        ids = ids[-(context - 1) :]
        print(f"jaxllm: note: the conversation is longer than the context ({context}); cut its start", file=sys.stderr)
    return ids
