"""jaxllm params <-> PyTorch state dicts, one explicit table per model family.

Families and the PyTorch layouts they name:
  gpt2   GPT-2 style pre-LN model: wte, wpe, h.{i}.ln_1, attn.c_attn (fused q|k|v),
         attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f, lm_head (nn.Linear layout).
  postln the post-LN ReLU TransformerBlock stack: h.{i}.attn is torch's own
         nn.MultiheadAttention (in_proj_weight = q|k|v, out_proj), ff.0 / ff.2, ln1, ln2.
  llama  Hugging Face Llama names: model.embed_tokens, model.layers.{i}.input_layernorm,
         self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj,
         model.norm, lm_head.

Layouts: a torch nn.Linear weight is (out, in); a jaxllm kernel is (in, out) with
heads split out, e.g. q_proj (E, H, D) and o_proj (H, D, E), stacked over a leading
layer axis. Each rule below holds both directions of one tensor, so the same table
converts weights one way and gradients or checkpoints the other way. The parity tests
(tests/parity) prove the tables right; the Hugging Face converter reuses them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxllm.config import Config, ModelConfig

State = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One torch tensor <-> one or more jaxllm arrays.

    `torch_key` containing "{i}" is per layer: its `paths` are under params["blocks"]
    and index layer i of the stacked arrays.
    """

    torch_key: str
    paths: tuple[tuple[str, ...], ...]
    to_torch: Callable[..., np.ndarray]
    from_torch: Callable[[np.ndarray], tuple[np.ndarray, ...]] | None  # None: derived (tied head)


def _same(path: tuple[str, ...], key: str) -> Rule:
    return Rule(key, (path,), lambda a: a, lambda w: (w,))


def _transposed(path: tuple[str, ...], key: str) -> Rule:
    return Rule(key, (path,), lambda a: a.T, lambda w: (w.T,))


def _heads_in(path: tuple[str, ...], key: str, n: int, d: int) -> Rule:
    """(E, N, D) kernel <-> (N*D, E) weight; (N, D) bias <-> (N*D,)."""
    if path[-1] == "bias":
        return Rule(key, (path,), lambda b: b.reshape(-1), lambda w: (w.reshape(n, d),))
    return Rule(key, (path,), lambda k: k.reshape(k.shape[0], -1).T, lambda w: (w.T.reshape(-1, n, d),))


def _heads_out(path: tuple[str, ...], key: str, h: int, d: int) -> Rule:
    """(H, D, E) kernel <-> (E, H*D) weight."""
    return Rule(key, (path,), lambda k: k.reshape(-1, k.shape[-1]).T, lambda w: (w.T.reshape(h, d, -1),))


def _fused_qkv(kind: str, key: str, m: ModelConfig) -> Rule:
    """q|k|v kernels (or biases) concatenated on the output axis, as GPT-2's c_attn
    and nn.MultiheadAttention's in_proj store them."""
    paths = tuple(("attn", f"{p}_proj", kind) for p in "qkv")
    H, D = m.num_heads, m.head_dim
    if kind == "bias":
        return Rule(
            key,
            paths,
            lambda *bs: np.concatenate([b.reshape(-1) for b in bs]),
            lambda w: tuple(x.reshape(H, D) for x in np.split(w, 3)),
        )
    return Rule(
        key,
        paths,
        lambda *ks: np.concatenate([k.reshape(k.shape[0], -1).T for k in ks]),
        lambda w: tuple(x.T.reshape(-1, H, D) for x in np.split(w, 3)),
    )


def _head(m: ModelConfig) -> list[Rule]:
    """LM head: the tied embedding (derived, nothing to load back) or its own kernel."""
    if m.tie_embeddings:
        return [Rule("lm_head.weight", (("wte", "embedding"),), lambda e: e, None)]
    return [_transposed(("lm_head", "kernel"), "lm_head.weight")]


def _norm(path: str, key: str, m: ModelConfig) -> list[Rule]:
    rules = [_same((path, "scale"), f"{key}.weight")]
    if m.norm == "layernorm":
        rules.append(_same((path, "bias"), f"{key}.bias"))
    return rules


def gpt2_rules(m: ModelConfig) -> list[Rule]:
    """GPT-2 style pre-LN model (CustomLanguageModel of GPTBlocks)."""
    H, D = m.num_heads, m.head_dim
    rules = [_same(("wte", "embedding"), "wte.weight"), _same(("wpe", "embedding"), "wpe.weight")]
    rules += _norm("ln_1", "h.{i}.ln_1", m) + _norm("ln_2", "h.{i}.ln_2", m)
    rules += [
        _fused_qkv("kernel", "h.{i}.attn.c_attn.weight", m),
        _heads_out(("attn", "o_proj", "kernel"), "h.{i}.attn.c_proj.weight", H, D),
        _transposed(("mlp", "up_proj", "kernel"), "h.{i}.mlp.c_fc.weight"),
        _transposed(("mlp", "down_proj", "kernel"), "h.{i}.mlp.c_proj.weight"),
    ]
    if m.use_bias:
        rules += [
            _fused_qkv("bias", "h.{i}.attn.c_attn.bias", m),
            _same(("attn", "o_proj", "bias"), "h.{i}.attn.c_proj.bias"),
            _same(("mlp", "up_proj", "bias"), "h.{i}.mlp.c_fc.bias"),
            _same(("mlp", "down_proj", "bias"), "h.{i}.mlp.c_proj.bias"),
        ]
    if m.final_norm:
        rules += _norm("ln_f", "ln_f", m)
    return rules + _head(m)


def postln_rules(m: ModelConfig) -> list[Rule]:
    """Post-LN ReLU TransformerBlock stack; attention is torch.nn.MultiheadAttention."""
    H, D = m.num_heads, m.head_dim
    rules = [_same(("wte", "embedding"), "wte.weight"), _same(("wpe", "embedding"), "wpe.weight")]
    rules += _norm("ln_1", "h.{i}.ln1", m) + _norm("ln_2", "h.{i}.ln2", m)
    rules += [
        _fused_qkv("kernel", "h.{i}.attn.in_proj_weight", m),
        _heads_out(("attn", "o_proj", "kernel"), "h.{i}.attn.out_proj.weight", H, D),
        _transposed(("mlp", "up_proj", "kernel"), "h.{i}.ff.0.weight"),
        _transposed(("mlp", "down_proj", "kernel"), "h.{i}.ff.2.weight"),
    ]
    if m.use_bias:
        rules += [
            _fused_qkv("bias", "h.{i}.attn.in_proj_bias", m),
            _same(("attn", "o_proj", "bias"), "h.{i}.attn.out_proj.bias"),
            _same(("mlp", "up_proj", "bias"), "h.{i}.ff.0.bias"),
            _same(("mlp", "down_proj", "bias"), "h.{i}.ff.2.bias"),
        ]
    if m.final_norm:
        rules += _norm("ln_f", "ln_f", m)
    return rules + _head(m)


def llama_rules(m: ModelConfig) -> list[Rule]:
    """Llama style (Hugging Face names): RMSNorm, RoPE, SwiGLU, GQA, no biases."""
    H, K, D = m.num_heads, m.num_kv_heads, m.head_dim
    layer = "model.layers.{i}"
    rules = [_same(("wte", "embedding"), "model.embed_tokens.weight")]
    rules += _norm("ln_1", f"{layer}.input_layernorm", m) + _norm("ln_2", f"{layer}.post_attention_layernorm", m)
    rules += [
        _heads_in(("attn", "q_proj", "kernel"), f"{layer}.self_attn.q_proj.weight", H, D),
        _heads_in(("attn", "k_proj", "kernel"), f"{layer}.self_attn.k_proj.weight", K, D),
        _heads_in(("attn", "v_proj", "kernel"), f"{layer}.self_attn.v_proj.weight", K, D),
        _heads_out(("attn", "o_proj", "kernel"), f"{layer}.self_attn.o_proj.weight", H, D),
        _transposed(("mlp", "gate_proj", "kernel"), f"{layer}.mlp.gate_proj.weight"),
        _transposed(("mlp", "up_proj", "kernel"), f"{layer}.mlp.up_proj.weight"),
        _transposed(("mlp", "down_proj", "kernel"), f"{layer}.mlp.down_proj.weight"),
    ]
    if m.final_norm:
        rules += _norm("ln_f", "model.norm", m)
    return rules + _head(m)


FAMILIES: dict[str, Callable[[ModelConfig], list[Rule]]] = {
    "gpt2": gpt2_rules,
    "postln": postln_rules,
    "llama": llama_rules,
}

# What each family's torch layout can express; anything else has no place in it.
_REQUIRED: dict[str, dict[str, Any]] = {
    "gpt2": {"norm": "layernorm", "block": "pre_ln", "position": "learned", "mlp": "gelu"},
    "postln": {"norm": "layernorm", "block": "post_ln", "position": "learned", "mlp": "relu"},
    "llama": {"norm": "rmsnorm", "block": "pre_ln", "position": "rope", "mlp": "swiglu", "use_bias": False},
}


def check_family(config: Config | ModelConfig, family: str) -> ModelConfig:
    """Raise ValueError naming the first model field the family's layout cannot hold."""
    m = config.model if isinstance(config, Config) else config
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is unknown; choose one of {', '.join(FAMILIES)}")
    for field, want in _REQUIRED[family].items():
        if getattr(m, field) != want:
            raise ValueError(
                f"model.{field}={getattr(m, field)!r} does not fit the {family} layout, which needs {want!r}"
            )
    if family != "llama" and m.num_kv_heads != m.num_heads:
        raise ValueError(f"model.num_kv_heads={m.num_kv_heads}: the {family} layout has no GQA; set it to num_heads")
    if family != "llama" and m.num_heads * m.head_dim != m.d_model:
        raise ValueError(f"model.head_dim={m.head_dim}: the {family} layout needs num_heads * head_dim == d_model")
    return m


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def to_torch(config: Config | ModelConfig, params: Mapping[str, Any], family: str) -> State:
    """jaxllm params (or gradients) -> {torch key: numpy array} in the family's layout."""
    m = check_family(config, family)
    tree = jax.tree.map(np.asarray, params)
    state: State = {}
    for rule in FAMILIES[family](m):
        if "{i}" in rule.torch_key:
            for i in range(m.num_layers):
                arrays = [_get(tree["blocks"], p)[i] for p in rule.paths]
                state[rule.torch_key.format(i=i)] = rule.to_torch(*arrays)
        else:
            state[rule.torch_key] = rule.to_torch(*[_get(tree, p) for p in rule.paths])
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
        if "{i}" in rule.torch_key:
            per_layer = []
            for i in range(m.num_layers):
                key = rule.torch_key.format(i=i)
                if key not in arrays:
                    raise KeyError(f"{family} state dict has no {key!r}")
                per_layer.append(rule.from_torch(arrays[key]))
                used.add(key)
            for j, path in enumerate(rule.paths):
                _set(params, ("blocks", *path), np.stack([parts[j] for parts in per_layer]))
        else:
            if rule.torch_key not in arrays:
                raise KeyError(f"{family} state dict has no {rule.torch_key!r}")
            for path, value in zip(rule.paths, rule.from_torch(arrays[rule.torch_key]), strict=True):
                _set(params, path, value)
            used.add(rule.torch_key)
    extra = sorted(set(arrays) - used)
    if extra:
        raise ValueError(
            f"{len(extra)} unused keys in the {family} state dict, e.g. {extra[0]!r}; wrong family or sizes?"
        )
    return params
