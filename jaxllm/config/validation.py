"""The rules a config must obey, within and across sections, checked once at load time.

Why up front: a bad value fails in the first second with a message that names the key,
the value and the fix, never forty minutes into a run. Every message is one line.
"""

from __future__ import annotations

import math

from jaxllm.config.schema import Config
from jaxllm.config.schema_model import ModelConfig
from jaxllm.config.validation_families import check_expert_mesh, check_families
from jaxllm.config.validation_posttrain import check_grpo, check_lora
from jaxllm.errors import ConfigError
from jaxllm.parallel.axes import MESH_AXES, parse_rules


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate_model(m: ModelConfig) -> None:
    """Rules of the model section alone. Raises ConfigError naming the first broken key."""
    for name in ("vocab_size", "max_seq_len", "d_model", "num_layers", "num_heads"):
        value = getattr(m, name)
        _need(value > 0, f"model.{name}={value} must be a positive integer")
    _need(
        m.d_model % m.num_heads == 0 or m.head_dim != m.d_model // m.num_heads,
        f"model.num_heads={m.num_heads} does not divide model.d_model={m.d_model}; "
        f"choose num_heads among the divisors of {m.d_model}, or set model.head_dim",
    )
    for name in ("num_kv_heads", "head_dim", "d_ff"):
        value = getattr(m, name)
        _need(
            value is not None and value > 0,
            f"model.{name}={value} must be a positive integer (or null for the default)",
        )
    _need(
        m.num_heads % m.num_kv_heads == 0,
        f"model.num_kv_heads={m.num_kv_heads} does not divide model.num_heads={m.num_heads}; "
        "use a divisor (1 = MQA, num_heads = MHA)",
    )
    if m.position == "rope":
        _need(m.head_dim % 2 == 0, f"model.head_dim={m.head_dim} must be even for RoPE (it rotates pairs)")
        _need(m.rope_theta > 0, f"model.rope_theta={m.rope_theta} must be positive (10000 GPT-NeoX, 500000 Llama-3)")
    s = m.rope_scaling
    if s.kind != "none":
        _need(m.position == "rope", f"model.rope_scaling.kind={s.kind!r} needs model.position=rope")
        _need(s.factor >= 1, f"model.rope_scaling.factor={s.factor} must be >= 1")
        _need(
            s.kind == "linear" or s.high_freq_factor > s.low_freq_factor > 0,
            f"model.rope_scaling.high_freq_factor={s.high_freq_factor} must exceed "
            f"low_freq_factor={s.low_freq_factor} > 0",
        )
        _need(
            s.original_max_seq_len > 0,
            f"model.rope_scaling.original_max_seq_len={s.original_max_seq_len} must be positive",
        )
    check_families(m)
    check_lora(m)
    _need(m.norm_eps > 0, f"model.norm_eps={m.norm_eps} must be positive (1e-5 is usual)")
    _need(m.init_std > 0, f"model.init_std={m.init_std} must be positive (0.02 is usual)")
    _need(m.loss_chunk >= 0, f"model.loss_chunk={m.loss_chunk} must be >= 0 (positions per chunk; 0: no chunks)")
    for name in ("dropout", "attention_dropout"):
        value = getattr(m, name)
        _need(0.0 <= value < 1.0, f"model.{name}={value} must be in [0, 1)")
    _need(
        not (m.attention_impl in ("dot_product", "splash") and m.attention_dropout > 0),
        f"model.attention_dropout={m.attention_dropout} is not supported by model.attention_impl={m.attention_impl}; "
        "set attention_impl=xla or attention_dropout=0",
    )
    _need(
        m.attention_block >= 0 and m.attention_block % 128 == 0,
        f"model.attention_block={m.attention_block} must be a multiple of 128 (the kernel's tiles), or 0: "
        "chosen per length",
    )


def _check_mesh(cfg: Config) -> None:
    """Axis sizes, and the model sizes tensor parallelism must split evenly."""
    m, mesh = cfg.model, cfg.mesh
    sizes = {name: getattr(mesh, name) for name in MESH_AXES}
    for name, value in sizes.items():
        _need(value == -1 or value >= 1, f"mesh.{name}={value} must be >= 1, or -1 for the remaining devices")
    _need(list(sizes.values()).count(-1) <= 1, f"mesh: only one axis may be -1, got {sizes}")
    if mesh.tensor > 1:
        for name in ("num_heads", "num_kv_heads", "d_ff"):
            value = getattr(m, name)
            _need(
                value % mesh.tensor == 0,
                f"model.{name}={value} is not divisible by mesh.tensor={mesh.tensor}; "
                "tensor parallelism splits it evenly, so pick mesh.tensor dividing it",
            )
    check_expert_mesh(m, mesh)


def _check_slices(cfg: Config) -> None:
    """Multi-slice: only `data` crosses slices, so a fixed mesh.data must split over them
    (with data=-1 the check waits for the device count, in jaxllm/parallel/mesh.py)."""
    mesh = cfg.mesh
    _need(mesh.slices >= 0, f"mesh.slices={mesh.slices} must be >= 0 (0: as many as the devices' slice_index shows)")
    if mesh.slices > 1 and mesh.data != -1:
        _need(
            mesh.data % mesh.slices == 0,
            f"mesh.data={mesh.data} is not divisible by mesh.slices={mesh.slices}; only data spans slices (over "
            f"DCN), so make mesh.data a multiple of {mesh.slices} and keep fsdp, context, tensor within a slice",
        )


def _check_pipeline(cfg: Config) -> None:
    """The pipeline schedule: layers per stage and lap, microbatches per stage, no dropout inside."""
    m = cfg.model
    R = cfg.pipeline.repeats
    _need(R >= 1, f"pipeline.repeats={R} must be >= 1 (1 = GPipe, more = circular schedule)")
    if cfg.mesh.pipeline > 1:
        S, M = cfg.mesh.pipeline, cfg.train.microbatches
        _need(
            m.num_layers % (S * R) == 0,
            f"model.num_layers={m.num_layers} is not divisible by mesh.pipeline x pipeline.repeats = {S} x {R}; "
            "every stage needs the same number of layers per lap",
        )
        _need(
            M % S == 0,
            f"train.microbatches={M} is not divisible by mesh.pipeline={S}; the schedule needs M = k x S "
            f"microbatches (e.g. train.microbatches={2 * S})",
        )
        _need(
            m.dropout == 0 and m.attention_dropout == 0,
            f"model.dropout={m.dropout} / attention_dropout={m.attention_dropout}: dropout inside the pipeline "
            "schedule is not supported yet; set them to 0 with mesh.pipeline > 1",
        )


def _check_tokenizer(cfg: Config) -> None:
    """Tokenizer training sizes, and room in the model's vocabulary for the byte tokenizer."""
    tok = cfg.tokenizer
    _need(tok.vocab_size > 0, f"tokenizer.vocab_size={tok.vocab_size} must be positive")
    _need(
        not tok.byte_fallback or tok.vocab_size > 260,
        f"tokenizer.vocab_size={tok.vocab_size} leaves no room for pieces: byte fallback takes 256 byte ids + 4 "
        "special ids; use a larger vocab_size (e.g. 1000) or tokenizer.byte_fallback=false",
    )
    _need(0 < tok.character_coverage <= 1, f"tokenizer.character_coverage={tok.character_coverage} must be in (0, 1]")
    if tok.path == "byte":
        _need(
            cfg.model.vocab_size >= 256,
            f"model.vocab_size={cfg.model.vocab_size} is too small for tokenizer.path=byte (256 ids); "
            "set it to 256 or more",
        )


def _check_data(cfg: Config) -> None:
    """The data section with its filters and dedup, and data.seq_len against the model's context."""
    d, m = cfg.data, cfg.model
    _need(d.seq_len > 0, f"data.seq_len={d.seq_len} must be positive")
    _need(0 <= d.val_fraction < 1, f"data.val_fraction={d.val_fraction} must be in [0, 1)")
    _need(d.shard_tokens > 0, f"data.shard_tokens={d.shard_tokens} must be positive")
    _need(d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0 (0 reads in the main process)")
    _need(d.prefetch >= 0, f"data.prefetch={d.prefetch} must be >= 0")
    _need(d.stream_shards >= 0, f"data.stream_shards={d.stream_shards} must be >= 0 (0: one reader shard per process)")
    for i, part in enumerate(d.mixture):
        _need(bool(part.path), f"data.mixture[{i}].path is empty; name a prepared dataset folder or raw text files")
        _need(math.isfinite(part.weight) and part.weight > 0, f"data.mixture[{i}].weight={part.weight} must be "
              "positive and finite (weights are relative: they are normalized to sum to 1)")  # fmt: skip
    f = d.filters
    _need(f.min_chars >= 0, f"data.filters.min_chars={f.min_chars} must be >= 0")
    _need(f.max_chars >= f.min_chars, f"data.filters.max_chars={f.max_chars} must be >= min_chars={f.min_chars}")
    for name in ("min_alnum_fraction", "max_repeated_line_fraction"):
        value = getattr(f, name)
        _need(0 <= value <= 1, f"data.filters.{name}={value} must be in [0, 1]")
    dd = d.dedup
    _need(0 < dd.threshold <= 1, f"data.dedup.threshold={dd.threshold} must be in (0, 1]")
    _need(dd.num_perm > 0 and dd.bands > 0, f"data.dedup.num_perm={dd.num_perm} and bands={dd.bands} must be positive")
    _need(
        dd.num_perm % dd.bands == 0,
        f"data.dedup.num_perm={dd.num_perm} is not divisible by data.dedup.bands={dd.bands}",
    )
    _need(dd.shingle_words > 0, f"data.dedup.shingle_words={dd.shingle_words} must be positive")
    _need(
        d.seq_len <= m.max_seq_len,
        f"data.seq_len={d.seq_len} exceeds model.max_seq_len={m.max_seq_len}; "
        "lower data.seq_len or raise model.max_seq_len",
    )


def _check_attention(cfg: Config) -> None:
    """The splash kernel's tiles against the training length: refused here, not at trace time."""
    m, C = cfg.model, max(cfg.mesh.context, 1)
    T = cfg.data.seq_len // C  # each context device's share of the queries is what the kernel tiles
    each = f"data.seq_len / mesh.context = {cfg.data.seq_len} / {C}" if C > 1 else f"data.seq_len={T}"
    if m.attention_impl == "splash" and not m.attention_block:
        _need(
            T % 128 == 0,
            f"{each} cannot be tiled by model.attention_impl=splash (its tiles are multiples of 128); "
            f"set data.seq_len={-(-T // 128) * 128 * C}, or attention_impl=auto (xla at such lengths)",
        )
    if m.attention_impl in ("splash", "auto") and m.attention_block:
        _need(
            T % m.attention_block == 0,
            f"model.attention_block={m.attention_block} does not divide {each}; set attention_block=0 "
            "(chosen per length) or a multiple of 128 dividing the length",
        )


def _check_context(cfg: Config) -> None:
    """Context parallelism: the sequence splits into equal shards (2 chunks each when balanced),
    attention dropout is not split, and the ring runs xla blocks only."""
    m, C, T = cfg.model, cfg.mesh.context, cfg.data.seq_len
    if C <= 1:
        return
    pieces = 2 * C if m.context_load_balance else C
    _need(
        T % pieces == 0,
        f"data.seq_len={T} does not split into mesh.context={C} shards"
        + (f" of 2 chunks each (model.context_load_balance=true needs a multiple of {pieces})" if pieces > C else "")
        + f"; set data.seq_len={-(-T // pieces) * pieces}",
    )
    _need(
        m.attention_dropout == 0,
        f"model.attention_dropout={m.attention_dropout} is not supported with mesh.context={C}; set it to 0",
    )
    for name in ("sliding_window", "attn_logit_softcap"):
        _need(
            not getattr(m, name),
            f"model.{name}={getattr(m, name)} is not supported with mesh.context={C} yet (context-parallel "
            "attention is plain causal); set mesh.context=1",
        )
    _need(
        not (m.attention_impl == "splash" and m.context_attention == "ring"),
        "model.context_attention=ring computes each block with xla einsums, not the splash kernel; set "
        "model.attention_impl=auto (or xla), or model.context_attention=allgather to keep the kernel",
    )
    if m.attention_impl == "splash":
        _need(
            T % (C * C) == 0,
            f"data.seq_len={T}: the splash kernel splits its mask over mesh.context={C} shards and needs a "
            f"multiple of context^2 = {C * C}",
        )


def _check_chat(cfg: Config) -> None:
    """Each role template holds {content} once, and a reply has a stop string after it."""
    for role in ("system", "user", "assistant"):
        template = getattr(cfg.chat, role)
        _need(
            template.count("{content}") == 1,
            f"chat.{role}={template!r} must contain {{content}} exactly once "
            f"(e.g. '<|{role}|>\\n{{content}}<|end|>\\n')",
        )
    _need(
        cfg.chat.assistant.split("{content}")[1].strip() != "",
        f"chat.assistant={cfg.chat.assistant!r} needs text after {{content}} (the stop string that ends a reply)",
    )


def _check_posttrain(cfg: Config) -> None:
    """DPO and reward-model coefficients, and the held-out share."""
    pt = cfg.posttrain
    _need(pt.beta > 0, f"posttrain.beta={pt.beta} must be > 0 (DPO's usual value is 0.1)")
    _need(
        0 <= pt.label_smoothing < 0.5,
        f"posttrain.label_smoothing={pt.label_smoothing} must be in [0, 0.5)",
    )
    for name in ("reward_margin", "reward_center"):
        value = getattr(pt, name)
        _need(value >= 0, f"posttrain.{name}={value} must be >= 0 (0 turns it off)")
    _need(
        0 <= pt.val_fraction < 1,
        f"posttrain.val_fraction={pt.val_fraction} must be in [0, 1)",
    )


def _check_ppo(cfg: Config) -> None:
    """PPO sizes, coefficients and ranges."""
    p = cfg.ppo
    for name in ("rollout_batch", "epochs", "max_new_tokens", "kl_horizon", "eval_prompts"):
        value = getattr(p, name)
        _need(value > 0, f"ppo.{name}={value} must be a positive integer")
    _need(p.temperature > 0, f"ppo.temperature={p.temperature} must be > 0 (rollouts sample; 1.0 is usual)")
    for name in ("kl_coef", "critic_lr", "missing_stop_penalty", "critic_warmup"):
        value = getattr(p, name)
        _need(value >= 0, f"ppo.{name}={value} must be >= 0")
    for name in ("clip", "value_clip", "kl_target"):
        value = getattr(p, name)
        _need(value > 0, f"ppo.{name}={value} must be > 0")
    for name in ("gamma", "lam"):
        value = getattr(p, name)
        _need(0 <= value <= 1, f"ppo.{name}={value} must be in [0, 1]")


def _check_train(cfg: Config) -> None:
    """Loop sizes and cadences."""
    t = cfg.train
    for name in ("steps", "batch_size", "microbatches"):
        value = getattr(t, name)
        _need(value > 0, f"train.{name}={value} must be a positive integer")
    _need(
        t.batch_size % t.microbatches == 0,
        f"train.batch_size={t.batch_size} is not divisible by train.microbatches={t.microbatches}",
    )
    for name in ("log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints"):
        value = getattr(t, name)
        _need(value > 0, f"train.{name}={value} must be a positive integer")
    _need(t.keep_every >= 0, f"train.keep_every={t.keep_every} must be >= 0 (0 keeps none beyond the last N)")
    _need(t.z_loss >= 0, f"train.z_loss={t.z_loss} must be >= 0 (1e-4 is usual; 0: off)")


def _check_optimizer(cfg: Config) -> None:
    """AdamW and schedule ranges."""
    o = cfg.optimizer
    _need(o.lr > 0, f"optimizer.lr={o.lr} must be positive")
    _need(0.0 <= o.min_lr_ratio <= 1.0, f"optimizer.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")
    _need(o.warmup_steps >= 0, f"optimizer.warmup_steps={o.warmup_steps} must be >= 0")
    _need(o.decay_steps is not None and o.decay_steps >= 0, f"optimizer.decay_steps={o.decay_steps} must be >= 0")
    for name in ("beta1", "beta2"):
        value = getattr(o, name)
        _need(0.0 <= value < 1.0, f"optimizer.{name}={value} must be in [0, 1)")
    _need(o.eps > 0, f"optimizer.eps={o.eps} must be positive")
    _need(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay} must be >= 0")
    _need(o.grad_clip >= 0, f"optimizer.grad_clip={o.grad_clip} must be >= 0 (0 disables clipping)")


def _check_layout(cfg: Config) -> None:
    """The mesh.rules entries, and a per-step batch the data-parallel axes split evenly."""
    mesh, t = cfg.mesh, cfg.train
    parse_rules(mesh.rules)
    known = [mesh.data, mesh.fsdp, mesh.expert]  # the batch axes (jaxllm/parallel/mesh.py BATCH_AXES)
    if -1 not in known:
        per_step = t.batch_size // t.microbatches
        shards = math.prod(known)
        _need(
            per_step % shards == 0,
            f"train.batch_size={t.batch_size} / microbatches={t.microbatches} = {per_step} is not divisible by "
            f"mesh.data*mesh.fsdp*mesh.expert={shards}",
        )


# In the order the checks ran when they were one function: the first broken key is reported.
_SECTION_CHECKS = (
    _check_mesh,
    _check_slices,
    _check_pipeline,
    _check_tokenizer,
    _check_data,
    _check_attention,
    _check_context,
    _check_chat,
    _check_posttrain,
    _check_ppo,
    lambda cfg: check_grpo(cfg.grpo),
    _check_train,
    _check_optimizer,
    _check_layout,
)


def validate(cfg: Config) -> None:
    """All rules, within and across sections. Raises ConfigError naming the first broken key."""
    validate_model(cfg.model)
    for check in _SECTION_CHECKS:
        check(cfg)
