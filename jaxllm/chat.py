"""Chat templates: a conversation (a list of role/content messages) as text.

The template lives in the run's config (`chat:` section, jaxllm.config.ChatConfig), so
the model is always prompted the way it was tuned. Rendering returns spans marked as
prompt or response, which is what instruction tuning needs to put the loss on the
replies only; `jaxllm chat` joins them and appends the assistant's opening text.

An imported model's own Jinja template (chat.template) is one more template, chosen
the same way: when set, it renders instead of the role templates, with the tokenizer's
BOS/EOS texts, exactly as transformers' apply_chat_template does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jaxllm.chat_template import ChatTemplateError, render_jinja
from jaxllm.config import ChatConfig

ROLES = ("system", "user", "assistant")


def _split(template: str) -> tuple[str, str]:
    before, after = template.split("{content}")
    return before, after


def generation_prompt(chat: ChatConfig) -> str:
    """The text that opens an assistant reply (what precedes its content)."""
    return _split(chat.assistant)[0]


def stop_string(chat: ChatConfig) -> str:
    """The text that ends an assistant reply: the first line after `{content}`; with a
    Jinja template, its end-of-turn token (chat.stop_tokens), which is text too."""
    if chat.template:
        if not chat.stop_tokens:
            raise ValueError(
                "chat.template is set but chat.stop_tokens is empty, so nothing ends a reply; "
                "name the template's end-of-turn token, e.g. chat.stop_tokens='[\"<|im_end|>\"]'"
            )
        return chat.stop_tokens[0]
    return _split(chat.assistant)[1].strip().splitlines()[0]


def check_messages(messages: Sequence[Mapping[str, str]]) -> None:
    """Clear errors for malformed conversations (which role, which message)."""
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, Mapping) else None
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(msg.get("content"), str):
            raise ValueError(f"message {i} ({role}) needs a string 'content'")
        if role == "system" and i != 0:
            raise ValueError(f"message {i} is a system message; only the first message may be one")


def _special_texts(tokenizer) -> dict[str, str]:
    """bos_token / eos_token as the template sees them ('' when there is none)."""
    if tokenizer is None:
        return {}
    bos = tokenizer.bos_id
    return {"bos_token": "" if bos is None else tokenizer.piece(bos), "eos_token": tokenizer.piece(tokenizer.eos_id)}


def _jinja_spans(chat: ChatConfig, messages: Sequence[Mapping[str, str]], tokenizer) -> list[tuple[str, bool]]:
    """Spans from a Jinja template: the text the template adds for each assistant message
    past its generation prompt is the response. A template whose earlier text changes as
    the conversation grows cannot be split this way, and says so."""
    special = _special_texts(tokenizer)
    spans: list[tuple[str, bool]] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        opened = render_jinja(chat.template, messages[:i], True, **special)
        closed = render_jinja(chat.template, messages[: i + 1], False, **special)
        if not (opened.startswith(done) and closed.startswith(opened)):
            raise ChatTemplateError(
                f"the chat template rewrites earlier text when message {i} is added, so replies cannot be told "
                "apart from prompts; train with the role templates (chat.template='')"
            )
        spans += [(opened[len(done) :], False), (closed[len(opened) :], True)]
        done = closed
    whole = render_jinja(chat.template, messages, False, **special)
    if whole[len(done) :]:
        spans.append((whole[len(done) :], False))
    return [(t, r) for t, r in spans if t]


def render_spans(chat: ChatConfig, messages: Sequence[Mapping[str, str]], tokenizer=None) -> list[tuple[str, bool]]:
    """[(text, is_response)]: each assistant message's content and closing text are the
    response (what a model learns to produce, stop string included); everything else,
    its opening text included, is prompt."""
    check_messages(messages)
    if chat.template:
        return _jinja_spans(chat, messages, tokenizer)
    spans: list[tuple[str, bool]] = []
    if chat.default_system and (not messages or messages[0]["role"] != "system"):
        spans.append((chat.system.replace("{content}", chat.default_system), False))
    for msg in messages:
        before, after = _split(getattr(chat, msg["role"]))
        if msg["role"] == "assistant":
            spans += [(before, False), (msg["content"] + after, True)]
        else:
            spans.append((before + msg["content"] + after, False))
    return spans


def render(
    chat: ChatConfig, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True, tokenizer=None
) -> str:
    """The conversation as one string, ending with the assistant's opening text when
    `add_generation_prompt` (ready for the model to write the next reply). A Jinja
    template gets the tokenizer's BOS/EOS texts (pass the tokenizer)."""
    if chat.template:
        check_messages(messages)
        return render_jinja(chat.template, messages, add_generation_prompt, **_special_texts(tokenizer))
    text = "".join(t for t, _ in render_spans(chat, messages))
    return text + generation_prompt(chat) if add_generation_prompt else text
