"""An imported model is prompted exactly as transformers prompts it: BOS only by the
source tokenizer's rules, the model's own Jinja chat template, its end-of-turn token.

The models are tiny random Llamas with a word-level tokenizer (decoding then encoding
gives back the same ids, so `jaxllm chat`'s printed reply pins down its token ids).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from jaxllm.chat import render
from jaxllm.cli import main
from jaxllm.config import ChatConfig, load_config
from jaxllm.data.hf_tokenizer import HFTokenizer
from jaxllm.data.tokenizer import encode_prompt
from jaxllm.evaluate.scoring import encode_pair
from jaxllm.posttrain.data import tokenize_conversation, tokenize_prompt

SPECIALS = ["<unk>", "<s>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = (
    "system user assistant hello world how are you the a cat dog sat on mat is red blue green one two three "
    "four five six seven eight nine ten yes no maybe good bad day night sun moon"
).split()
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MESSAGES = [{"role": "system", "content": "you are good"}, {"role": "user", "content": "hello how are you"}]


def _tokenizer_dir(directory: Path, adds_bos: bool, layout: str = "jinja") -> Path:
    """save_pretrained of a word-level tokenizer; its post-processor adds `<s>` or nothing."""
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML
    fast.save_pretrained(directory)
    if layout == "config":  # the older layout: the template inside tokenizer_config.json
        (directory / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((directory / "tokenizer_config.json").read_text())
        config["chat_template"] = CHATML
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
    assert (directory / "chat_template.jinja").is_file() == (layout == "jinja")
    return directory


def _ids(encoded) -> list[int]:
    """apply_chat_template's ids, whether it returns a list or a BatchEncoding."""
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


@pytest.fixture(scope="module", params=["jinja", "config"])
def chat_model(request, tmp_path_factory):
    """(hf_dir, prompt ids, transformers' greedy reply ids ending in <|im_end|>)."""
    hf_dir = _tokenizer_dir(tmp_path_factory.mktemp(f"hf-{request.param}"), adds_bos=False, layout=request.param)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
            initializer_range=0.3, bos_token_id=1, eos_token_id=2,
        )
    ).eval()  # fmt: skip
    prompt = _ids(tok.apply_chat_template(MESSAGES, add_generation_prompt=True))
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    with torch.no_grad():
        free = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=6, eos_token_id=None)
        # Random weights never end a turn on their own: make <|im_end|>'s output row twice the row of the
        # token greedy picks 4th, so <|im_end|> wins (at the latest) where that token would have.
        fourth = int(free[0, len(prompt) + 3])
        model.lm_head.weight[im_end] = 2 * model.lm_head.weight[fourth]
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=20, eos_token_id=im_end)
    reply = out[0, len(prompt) :].tolist()
    assert reply[-1] == im_end and im_end not in reply[:-1] and len(reply) >= 3, reply
    model.save_pretrained(hf_dir, safe_serialization=True)
    return hf_dir, prompt, reply


def test_chat_on_an_imported_model_equals_transformers(chat_model, tmp_path, monkeypatch, capsys):
    hf_dir, prompt, reply = chat_model
    run = tmp_path / "run"
    assert main(["convert", "from-hf", str(hf_dir), str(run)]) == 0
    cfg = load_config(run / "config.yaml")
    assert cfg.chat.template == CHATML and cfg.chat.enabled and "<|im_end|>" in cfg.chat.stop_tokens
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(MESSAGES[1]["content"] + "\n"))
    # max-new-tokens well past the reply: only <|im_end|> can end it where transformers' ends
    args = ["chat", str(run), "--temperature", "0", "--max-new-tokens", "30", "--system", MESSAGES[0]["content"]]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "not instruction-tuned" not in err
    text = out.split("assistant> ", 1)[1]
    assert text.endswith("\n") and text.count("\n") == 1, repr(out)
    tok = HFTokenizer(run / "tokenizer.json")
    assert tok.encode(text[:-1]).tolist() == reply[:-1]  # the reply, <|im_end|> not printed
    # the prompt chat built is transformers' prompt: no BOS added to it
    assert encode_prompt(tok, render(cfg.chat, MESSAGES, True, tok), special_tokens=False) == prompt
    assert tokenize_prompt(tok, cfg.chat, MESSAGES) == prompt

    exported = tmp_path / "hf-out"
    assert main(["convert", "to-hf", str(run), str(exported)]) == 0
    again = transformers.AutoTokenizer.from_pretrained(exported)
    assert _ids(again.apply_chat_template(MESSAGES, add_generation_prompt=True)) == prompt
    assert json.loads((exported / "tokenizer_config.json").read_text())["chat_template"] == CHATML


def test_imported_config_describes_the_imported_tokenizer(chat_model, tmp_path):
    hf_dir = chat_model[0]
    run = tmp_path / "run"
    assert main(["convert", "from-hf", str(hf_dir), str(run)]) == 0
    tok_cfg = load_config(run / "config.yaml").tokenizer
    assert Path(tok_cfg.path).resolve() == (run / "tokenizer.json").resolve()
    assert tok_cfg.vocab_size == len(SPECIALS) + len(WORDS) and tok_cfg.kind == "word"
    assert tok_cfg.special_tokens == tuple(SPECIALS) and not tok_cfg.byte_fallback


@pytest.mark.parametrize("adds_bos", [True, False])
def test_prompt_ids_equal_the_source_tokenizers(adds_bos, tmp_path):
    hf_dir = _tokenizer_dir(tmp_path, adds_bos=adds_bos)
    theirs = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = HFTokenizer(hf_dir / "tokenizer.json")
    assert ours.adds_bos == adds_bos
    text = "the cat sat on the mat"
    expected = theirs(text)["input_ids"]
    assert (expected[0] == ours.bos_id) == adds_bos
    assert encode_prompt(ours, text) == expected  # what `jaxllm sample` encodes
    context, continuation = encode_pair(ours, "the cat sat on", " the mat")  # an evaluation context
    assert context == theirs("the cat sat on")["input_ids"] and continuation == ours.encode(" the mat").tolist()
    # SFT with ChatML role templates: the record's ids are what the source tokenizer makes of its text
    chatml = ChatConfig(
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
    )
    conversation = [*MESSAGES, {"role": "assistant", "content": "yes good day"}]
    record = tokenize_conversation(ours, chatml, conversation)
    assert record.ids.tolist() == theirs(render(chatml, conversation, add_generation_prompt=False))["input_ids"]
    assert int(record.weights.sum()) == len(ours.encode("yes good day<|im_end|>\n"))
    # SFT with the model's own template: apply_chat_template's ids
    jinja = ChatConfig(template=CHATML, stop_tokens=("<|im_end|>",))
    record = tokenize_conversation(ours, jinja, conversation)
    assert record.ids.tolist() == _ids(theirs.apply_chat_template(conversation))
    assert np.asarray(record.ids)[record.weights > 0].tolist() == ours.encode("yes good day<|im_end|>\n").tolist()
    # never a second BOS, though transformers' tokenizer(text) would add one
    if adds_bos:
        assert encode_prompt(ours, "<s> " + text) == expected


def test_jinja_rendering_matches_transformers_and_is_sandboxed(tmp_path):
    from jaxllm.chat_template import ChatTemplateError, render_jinja

    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
        "{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}"
        "  {{ m['role'] }}: {{ m | tojson }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    )
    theirs = transformers.AutoTokenizer.from_pretrained(_tokenizer_dir(tmp_path, adds_bos=True))
    for gen in (True, False):
        expected = theirs.apply_chat_template(
            MESSAGES, chat_template=template, tokenize=False, add_generation_prompt=gen
        )
        assert render_jinja(template, MESSAGES, gen, bos_token="<s>", eos_token="<|endoftext|>") == expected
    with pytest.raises(ChatTemplateError, match="refused the conversation: bad role tool"):
        render_jinja(template, [{"role": "tool", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_jinja("{% for m in messages %}", MESSAGES)
    with pytest.raises(ChatTemplateError, match="refused"):  # the sandbox: no way to Python internals
        render_jinja("{{ messages.__class__.__mro__ }}", MESSAGES)


def test_sample_and_chat_take_overrides(chat_model, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["convert", "from-hf", str(chat_model[0]), str(run)]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    # the role templates instead of the imported one, for this command only
    assert main(["chat", str(run), "--temperature", "0", "--max-new-tokens", "2", "chat.template=''"]) == 0
    assert load_config(run / "config.yaml").chat.template == CHATML
    assert main(["sample", str(run), "--prompt", "hello", "--max-new-tokens", "2", "chat.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
