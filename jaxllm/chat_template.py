"""A model's own Jinja chat template, rendered the way transformers renders it.

Why: an imported instruction-tuned model was tuned on prompts its template wrote
(ChatML's `<|im_start|>user ... <|im_end|>`, Llama 3's headers, ...). Any other
rendering is a different input and gets worse or unrelated answers. Templates from the
Hub are untrusted code, so they run in jinja2's sandbox, with the same environment
options, filters and globals as transformers' apply_chat_template (trim_blocks,
lstrip_blocks, loopcontrols, a non-escaping tojson, raise_exception, strftime_now), so
the same template gives the same text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

from jaxllm.errors import JaxllmError


class ChatTemplateError(JaxllmError, ValueError):
    """A chat template that does not compile or refuses a conversation."""


@functools.lru_cache(maxsize=8)
def _compiled(template: str) -> Any:
    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ChatTemplateError(
            f"chat.template does not compile (line {e.lineno}: {e.message}); fix it in the run's config.yaml"
        ) from None


def render_jinja(
    template: str,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """The conversation as the model's template writes it (apply_chat_template(tokenize=False))."""
    try:
        return _compiled(template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"the run's chat template refused the conversation: {e}") from None
