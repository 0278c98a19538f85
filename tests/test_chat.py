"""Chat templates: rendering, the response spans instruction tuning trains on, errors."""

from __future__ import annotations

import pytest

import jaxllm
from jaxllm.chat import generation_prompt, render, render_spans, stop_string
from jaxllm.config import ChatConfig, ConfigError

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Reverse abc"},
    {"role": "assistant", "content": "cba"},
    {"role": "user", "content": "Add 2 and 3"},
]


def test_render_with_the_default_template():
    chat = ChatConfig()
    text = render(chat, MESSAGES)
    assert text == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nReverse abc<|end|>\n<|assistant|>\ncba<|end|>\n"
        "<|user|>\nAdd 2 and 3<|end|>\n<|assistant|>\n"
    )
    assert generation_prompt(chat) == "<|assistant|>\n" and stop_string(chat) == "<|end|>"
    assert render(chat, MESSAGES[:3], add_generation_prompt=False).endswith("cba<|end|>\n")


def test_only_replies_are_response_spans():
    spans = render_spans(ChatConfig(), MESSAGES[:3])
    assert [t for t, is_response in spans if is_response] == ["cba<|end|>\n"]
    assert "".join(t for t, _ in spans) == render(ChatConfig(), MESSAGES[:3], add_generation_prompt=False)
    with_default = render_spans(ChatConfig(default_system="You help."), MESSAGES[1:3])
    assert with_default[0] == ("<|system|>\nYou help.<|end|>\n", False)


def test_custom_templates_and_errors():
    overrides = ['chat.user="### User: {content}\\n"', 'chat.assistant="### Bot: {content}</s>\\n"']  # YAML quoting
    cfg = jaxllm.load_config("gpt2-124m", overrides)
    assert render(cfg.chat, MESSAGES[1:2]) == "### User: Reverse abc\n### Bot: "
    with pytest.raises(ConfigError, match="exactly once"):
        jaxllm.load_config("gpt2-124m", ["chat.user=no placeholder"])
    with pytest.raises(ConfigError, match="needs text after"):
        jaxllm.load_config("gpt2-124m", ['chat.assistant="A: {content}\\n"'])
    with pytest.raises(ValueError, match="message 0 has role 'bot'"):
        render(ChatConfig(), [{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="only the first message"):
        render(ChatConfig(), [MESSAGES[1], MESSAGES[0]])
