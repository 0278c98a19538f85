"""jaxllm params <-> PyTorch state dicts, one explicit table per model family.

Families and the PyTorch layouts they name:
  gpt2   GPT-2 style pre-LN model: wte, wpe, h.{i}.ln_1, attn.c_attn (fused q|k|v),
         attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f, lm_head (nn.Linear layout).
  postln the post-LN ReLU TransformerBlock stack: h.{i}.attn is torch's own
         nn.MultiheadAttention (in_proj_weight = q|k|v, out_proj), ff.0 / ff.2, ln1, ln2.
  llama, mistral, qwen2, qwen3, gemma2, gemma3, mixtral, qwen3_moe
         Hugging Face decoder names: model.embed_tokens, model.layers.{i}.input_layernorm,
         self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj,
         model.norm, lm_head, and what each family adds (layout_decoders.py).

The rules' shapes (a torch nn.Linear weight is (out, in); a jaxllm kernel is (in, out)
with heads split out) are in layout_rules.py; which model fields each family can hold
(check_family) in layout_fit.py. Each rule holds both directions of one tensor, so the
same table converts weights one way and gradients or checkpoints the other way. The
parity tests (tests/parity) prove the gpt2, postln and llama tables right; the Hugging
Face converter reuses all of them, and tests/test_hf_families.py proves the rest against
transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from jaxllm.config import Config, ModelConfig
from jaxllm.convert.layout_decoders import decoder_rules
from jaxllm.convert.layout_fit import check_family
from jaxllm.convert.layout_rules import Rule, fused_qkv, head, heads_out, norm, same, transposed

State = dict[str, np.ndarray]


def gpt2_rules(m: ModelConfig) -> list[Rule]:
    """GPT-2 style pre-LN model (CustomLanguageModel of GPTBlocks)."""
    H, D = m.num_heads, m.head_dim
    rules = [same(("wte", "embedding"), "wte.weight"), same(("wpe", "embedding"), "wpe.weight")]
    rules += norm("ln_1", "h.{i}.ln_1", m) + norm("ln_2", "h.{i}.ln_2", m)
    rules += [
        fused_qkv("kernel", "h.{i}.attn.c_attn.weight", m),
        heads_out(("attn", "o_proj", "kernel"), "h.{i}.attn.c_proj.weight", H, D),
        transposed(("mlp", "up_proj", "kernel"), "h.{i}.mlp.c_fc.weight"),
        transposed(("mlp", "down_proj", "kernel"), "h.{i}.mlp.c_proj.weight"),
    ]
    if m.use_bias:
        rules += [
            fused_qkv("bias", "h.{i}.attn.c_attn.bias", m),
            same(("attn", "o_proj", "bias"), "h.{i}.attn.c_proj.bias"),
            same(("mlp", "up_proj", "bias"), "h.{i}.mlp.c_fc.bias"),
            same(("mlp", "down_proj", "bias"), "h.{i}.mlp.c_proj.bias"),
        ]
    if m.final_norm:
        rules += norm("ln_f", "ln_f", m)
    return rules + head(m)


def postln_rules(m: ModelConfig) -> list[Rule]:
    """Post-LN ReLU TransformerBlock stack; attention is torch.nn.MultiheadAttention."""
    H, D = m.num_heads, m.head_dim
    rules = [same(("wte", "embedding"), "wte.weight"), same(("wpe", "embedding"), "wpe.weight")]
    rules += norm("ln_1", "h.{i}.ln1", m) + norm("ln_2", "h.{i}.ln2", m)
    rules += [
        fused_qkv("kernel", "h.{i}.attn.in_proj_weight", m),
        heads_out(("attn", "o_proj", "kernel"), "h.{i}.attn.out_proj.weight", H, D),
        transposed(("mlp", "up_proj", "kernel"), "h.{i}.ff.0.weight"),
        transposed(("mlp", "down_proj", "kernel"), "h.{i}.ff.2.weight"),
    ]
    if m.use_bias:
        rules += [
            fused_qkv("bias", "h.{i}.attn.in_proj_bias", m),
            same(("attn", "o_proj", "bias"), "h.{i}.attn.out_proj.bias"),
            same(("mlp", "up_proj", "bias"), "h.{i}.ff.0.bias"),
            same(("mlp", "down_proj", "bias"), "h.{i}.ff.2.bias"),
        ]
    if m.final_norm:
        rules += norm("ln_f", "ln_f", m)
    return rules + head(m)


FAMILIES: dict[str, Callable[[ModelConfig], list[Rule]]] = {
    "gpt2": gpt2_rules,
    "postln": postln_rules,
} | {
    family: decoder_rules(family)
    for family in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "mixtral", "qwen3_moe")
}


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _instances(rule: Rule, m: ModelConfig) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(torch key, index into the stacked arrays) of each tensor a rule stands for:
    one, one per layer ("{i}"), or one per layer and expert ("{i}" and "{j}")."""
    if "{j}" in rule.torch_key:
        for i in range(m.num_layers):
            for j in range(m.num_experts):
                yield rule.torch_key.format(i=i, j=j), (i, j)
    elif "{i}" in rule.torch_key:
        for i in range(m.num_layers):
            yield rule.torch_key.format(i=i), (i,)
    else:
        yield rule.torch_key, ()


def to_torch(config: Config | ModelConfig, params: Mapping[str, Any], family: str) -> State:
    """jaxllm params (or gradients) -> {torch key: numpy array} in the family's layout."""
    m = check_family(config, family)
    tree = jax.tree.map(np.asarray, params)
    state: State = {}
    for rule in FAMILIES[family](m):
        for key, index in _instances(rule, m):
            root = tree["blocks"] if index else tree
            state[key] = rule.to_torch(*[_get(root, p)[index] for p in rule.paths])
    return state


def from_torch(config: Config | ModelConfig, state: Mapping[str, Any], family: str) -> dict[str, Any]:
    """{torch key: array} in the family's layout -> jaxllm params (float32 numpy).

    Missing keys raise KeyError naming the key; unused keys raise ValueError, so a
    state dict of another family or size cannot load silently.
    """
    m = check_family(config, family)
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in state.items()}
    used: set[str] = set()
    params: dict[str, Any] = {}
    for rule in FAMILIES[family](m):
        if rule.from_torch is None:
            used.add(rule.torch_key)
            continue
        parts, lead = [], ()
        for key, index in _instances(rule, m):
            if key not in arrays:
                raise KeyError(f"{family} state dict has no {key!r}")
            parts.append(rule.from_torch(arrays[key]))
            used.add(key)
            lead = tuple(n + 1 for n in index)  # the last index + 1: the stacked axes' sizes
        for k, path in enumerate(rule.paths):
            if not lead:
                _set(params, path, parts[0][k])
                continue
            stacked = np.stack([p[k] for p in parts])
            _set(params, ("blocks", *path), stacked.reshape(lead + stacked.shape[1:]))
    extra = sorted(set(arrays) - used)
    if extra:
        raise ValueError(
            f"{len(extra)} unused keys in the {family} state dict, e.g. {extra[0]!r}; wrong family or sizes?"
        )
    return params
