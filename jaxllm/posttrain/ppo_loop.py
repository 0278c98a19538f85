"""PPO training (RLHF): sample replies, score them with a reward model, update the policy.

One iteration over `ppo.rollout_batch` prompts from posttrain.data:

1. **Rollout.** Replies are sampled with the KV-cache generator (`jaxllm.generate`: one
   jitted prefill plus a `lax.while_loop` of cached decode steps) at `ppo.temperature`
   and nothing else (no top-k / top-p: the log-probs below must be those of the
   distribution the tokens were drawn from). A reply ends at the chat template's stop
   string or EOS, which stays part of the reply (its last action), or at
   `ppo.max_new_tokens` (then `ppo.missing_stop_penalty` is taken off its score).
2. **Score.** One jitted forward each of the policy (old log-probs), the frozen reference
   (the parameters of posttrain.init_from as loaded: plain arrays, never updated), the
   critic (a value per token) and the reward model (its value at the reply's last token,
   the stop string, where it was trained to judge a conversation; jaxllm/posttrain/reward.py).
   All log-probs use logits / temperature with the padded vocabulary rows removed, as the
   sampler did.
3. **Advantages.** With `ppo.normalize_reward` (the default) the score is first made
   (score − μ) / σ, μ and σ measured once on the starting policy's replies to one
   rollout batch (as Ziegler et al. normalise their reward model), so kl_coef, the
   value clip and the critic's learning rate mean the same for any reward model.
   Per-token rewards −kl_coef · (log π −
   log π_ref) plus the score on the last reply token; GAE(γ, λ) by a reverse `lax.scan`;
   advantages whitened over the rollout batch (jaxllm/posttrain/ppo.py holds the math and its conventions).
4. **Updates.** `ppo.epochs` shuffled passes over the batch in minibatches of
   train.batch_size rows; each minibatch is one policy step (clipped surrogate) and one
   critic step (clipped value loss). Both are train steps from jaxllm/train/step.py, the
   pre-training step with another loss: the same mesh, shardings, gradient accumulation
   and optimizer code.

The critic is a separate model (InstructGPT's choice), a scalar-head Decoder with the
reward model's backbone (or `ppo.critic_from`'s) and a zero score head: a shared
backbone would let the value loss pull on the policy's features, and the reward model's
features already describe what is being valued; its head is reset because it was
trained at the last token only (its values at other positions were measured several σ
off, more than the clipped value loss lets a value move per rollout). With
`ppo.critic_warmup` the critic first fits the starting policy's returns on its own,
without the value clip. train.steps counts policy updates. The policy's checkpoints are the run's
(`jaxllm sample RUN_DIR` works on it); the critic's live in RUN_DIR/critic. Checkpoints
and signals are handled between iterations, so a stopped run resumes at a rollout
boundary (prompt order, KL coefficient and both optimizers restored).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config, ConfigError, save_config, to_dict
from jaxllm.errors import DataError
from jaxllm.posttrain import ppo as ppo_math
from jaxllm.train.trainer import TrainResult


@dataclass
class Rollout:
    """Sampled replies as right-padded rows: seq = prompt + reply (+ stop), and per
    target position (seq[:, 1:]) a 1 where the token is a reply token (an action)."""

    seq: np.ndarray  # (N, W) int32
    mask: np.ndarray  # (N, W - 1) float32
    last: np.ndarray  # (N,) int32: index in seq of each reply's last token
    stopped: np.ndarray  # (N,) bool: ended at the stop string / EOS
    replies: list[list[int]]  # the sampled reply tokens (stop included), for decoding


def build_rollout(prompts: list[list[int]], generation, width: int) -> Rollout:
    """Rows of prompt + sampled tokens; a reply of n tokens is n actions."""
    n = len(prompts)
    seq = np.zeros((n, width), np.int32)
    mask = np.zeros((n, width - 1), np.float32)
    last = np.zeros((n,), np.int32)
    replies = []
    for i, (p, toks, stop) in enumerate(zip(prompts, generation.tokens, generation.stops, strict=True)):
        reply = list(toks) + list(stop)
        if not reply:  # max_new_tokens 0 or a full context: nothing was sampled
            raise DataError(f"prompt {i} ({len(p)} tokens) left no room to sample a reply; shorten the prompts")
        row = (list(p) + reply)[:width]
        seq[i, : len(row)] = row
        mask[i, len(p) - 1 : len(row) - 1] = 1.0  # targets seq[j + 1] for j + 1 in the reply
        last[i] = len(row) - 1
        replies.append(reply)
    return Rollout(seq, mask, last, np.array([r == "stop" for r in generation.finish_reasons]), replies)


# ----------------------------------------------------------------------------- losses


def _token_logprobs(model, params, seq, temperature, vocab_limit):
    from jaxllm.model.decoder import Decoder

    logits = Decoder(model).apply({"params": params}, seq[:, :-1])
    return ppo_math.token_logprobs(logits, seq[:, 1:], temperature, vocab_limit)


def policy_loss_fn(temperature: float, vocab_limit: int | None, clip: float) -> Callable:
    """The policy's train-step loss: (sum of clipped surrogate losses, reply tokens, sums of
    clip fraction, approximate KL to the rollout policy and entropy)."""

    def loss_fn(cfg, params, batch, rng, pipeline):
        if pipeline is not None:
            raise ConfigError("PPO does not run through the pipeline schedule yet; use mesh.pipeline=1")
        logp, entropy = _token_logprobs(cfg.model, params, batch["seq"], temperature, vocab_limit)
        losses, clipped = ppo_math.policy_loss_terms(logp, batch["old_logprobs"], batch["advantages"], clip)
        m = batch["mask"]
        aux = {"clip_frac": jnp.sum(clipped * m), "approx_kl": jnp.sum((batch["old_logprobs"] - logp) * m),
               "entropy": jnp.sum(entropy * m)}  # fmt: skip
        return jnp.sum(losses * m), jnp.sum(m), aux

    return loss_fn


def critic_loss_fn(clip: float) -> Callable:
    """The critic's train-step loss: the clipped value loss summed over reply tokens."""

    def loss_fn(cfg, params, batch, rng, pipeline):
        from jaxllm.model.decoder import Decoder

        if pipeline is not None:
            raise ConfigError("PPO does not run through the pipeline schedule yet; use mesh.pipeline=1")
        values = Decoder(cfg.model).apply({"params": params}, batch["seq"][:, :-1])
        losses = ppo_math.value_loss_terms(values, batch["old_values"], batch["returns"], clip)
        m = batch["mask"]
        return jnp.sum(losses * m), jnp.sum(m), {"value_error": jnp.sum(jnp.abs(values - batch["returns"]) * m)}

    return loss_fn


# ----------------------------------------------------------------------------- the loop


@dataclass
class _Models:
    """Everything fixed for the run: configs, frozen parameters, the tokenizer."""

    cfg: Config
    critic_cfg: Config
    reward_cfg: Config
    ref_params: dict
    reward_params: dict
    tokenizer: object
    vocab_limit: int
    stop_tokens: list[int]
    stop_sequences: list[list[int]]


def ppo_config(cfg: Config) -> Config:
    """The run's config as trained: chat on and dropout off (a dropout mask would make
    the new/old log-prob ratio noise)."""
    model = dataclasses.replace(cfg.model, dropout=0.0, attention_dropout=0.0, head="lm")
    return dataclasses.replace(cfg, model=model, chat=dataclasses.replace(cfg.chat, enabled=True))


def _check(cfg: Config) -> None:
    p, t = cfg.ppo, cfg.train
    if not cfg.posttrain.data:
        raise ConfigError("posttrain.data is empty; give a file of prompts (Alpaca records, messages, or 'prompt')")
    if not cfg.posttrain.init_from:
        raise ConfigError("PPO needs a policy to start from and stay near; set posttrain.init_from=RUN_DIR")
    if not p.reward_from:
        raise ConfigError("PPO needs a reward model: set ppo.reward_from=RUN_DIR (a run of jaxllm reward)")
    if p.rollout_batch % t.batch_size:
        raise ConfigError(
            f"ppo.rollout_batch={p.rollout_batch} is not a multiple of train.batch_size={t.batch_size} "
            f"(the minibatch); use e.g. ppo.rollout_batch={max(1, p.rollout_batch // t.batch_size) * t.batch_size}"
        )


def _load_models(cfg: Config, log: Callable[[str], None]) -> tuple[_Models, dict]:
    """The frozen reference and reward model, the critic's start and the tokenizer;
    also returns the policy's start parameters."""
    from jaxllm.chat import stop_string
    from jaxllm.posttrain.sft import run_tokenizer, start_params
    from jaxllm.train.load import load_run, load_run_tokenizer

    p = cfg.ppo
    policy_start, step = start_params(cfg)
    log(f"ppo: policy and reference from {cfg.posttrain.init_from} (step {step})")
    reward_cfg, reward_params, rstep = load_run(p.reward_from)
    if reward_cfg.model.head != "scalar":
        raise ConfigError(f"ppo.reward_from={p.reward_from!r} is not a reward model (its model.head is not scalar)")
    tokenizer = run_tokenizer(cfg)
    rm_tokenizer = load_run_tokenizer(reward_cfg)
    probes = ("Hello, world!", stop_string(cfg.chat))
    if rm_tokenizer.vocab_size != tokenizer.vocab_size or any(
        rm_tokenizer.encode(s).tolist() != tokenizer.encode(s).tolist() for s in probes
    ):
        raise ConfigError(f"ppo.reward_from={p.reward_from!r} uses another tokenizer than the policy; PPO scores the "
                          "sampled tokens directly, so train the reward model from the same base run")  # fmt: skip
    critic_from = p.critic_from or p.reward_from
    critic_src, critic_params, cstep = (reward_cfg, reward_params, rstep) if critic_from == p.reward_from \
        else load_run(critic_from)  # fmt: skip
    if critic_src.model.head != "scalar":
        raise ConfigError(f"ppo.critic_from={critic_from!r} has no scalar head; give a reward-model run")
    critic_model = dataclasses.replace(cfg.model, head="scalar")
    if dataclasses.replace(critic_src.model, dropout=0.0, attention_dropout=0.0) != critic_model:
        raise ConfigError(f"the critic's start {critic_from!r} has another architecture than the policy; "
                          "the critic must match model.* (train the reward model from the SFT run)")  # fmt: skip
    log(f"ppo: reward model {p.reward_from} (step {rstep}); critic from {critic_from} (step {cstep})")
    lr = p.critic_lr or cfg.optimizer.lr
    critic_cfg = dataclasses.replace(
        cfg, model=critic_model, optimizer=dataclasses.replace(cfg.optimizer, lr=lr),
        train=dataclasses.replace(cfg.train, out_dir=str(Path(cfg.train.out_dir) / "critic")),
    )  # fmt: skip
    reward_model = dataclasses.replace(reward_cfg.model, dropout=0.0, attention_dropout=0.0)
    models = _Models(
        cfg=cfg, critic_cfg=critic_cfg, reward_cfg=dataclasses.replace(reward_cfg, model=reward_model),
        ref_params=policy_start, reward_params=reward_params, tokenizer=tokenizer,
        vocab_limit=min(tokenizer.vocab_size, cfg.model.vocab_size),
        stop_tokens=[] if tokenizer.eos_id is None else [tokenizer.eos_id],
        stop_sequences=[tokenizer.encode(stop_string(cfg.chat)).tolist()],
    )  # fmt: skip
    return models, {"policy": policy_start, "critic": critic_params}


def _prompts(cfg: Config, tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Tokenized train and held-out prompts (each the conversation plus the assistant's opening)."""
    from jaxllm.posttrain.data import load_records, prompt_messages, split_records, tokenize_prompt

    pt = cfg.posttrain
    train_recs, val_recs = split_records(load_records(pt.data), pt.val_fraction, cfg.train.seed)
    limit = cfg.model.max_seq_len - 1
    out = []
    for recs in (train_recs, val_recs):
        ids = [tokenize_prompt(tokenizer, cfg.chat, prompt_messages(r, f"{pt.data} record {i}"))
               for i, r in enumerate(recs)]  # fmt: skip
        out.append([p for p in ids if len(p) <= limit])
    if not out[0]:
        raise DataError(f"no prompt of {pt.data} fits the context (model.max_seq_len={cfg.model.max_seq_len}) with "
                        "room for a reply")  # fmt: skip
    return out[0], out[1][: cfg.ppo.eval_prompts]


def _make_scorer(models: _Models, mesh):
    """Jitted forward of policy, reference, critic and reward model over a rollout:
    (old log-probs, reference log-probs, values, scores)."""
    from jaxllm.model.decoder import Decoder
    from jaxllm.parallel.rules import flax_rules, parse_rules

    cfg, T = models.cfg, models.cfg.ppo.temperature
    rules = flax_rules(parse_rules(cfg.mesh.rules))

    @jax.jit
    def score(policy, ref, critic, reward, seq, last):
        with nn.logical_axis_rules(rules):
            logp, _ = _token_logprobs(cfg.model, policy, seq, T, models.vocab_limit)
            ref_logp, _ = _token_logprobs(cfg.model, ref, seq, T, models.vocab_limit)
            values = Decoder(models.critic_cfg.model).apply({"params": critic}, seq[:, :-1])
            rm_values = Decoder(models.reward_cfg.model).apply({"params": reward}, seq)
            scores = jnp.take_along_axis(rm_values, last[:, None], axis=-1)[:, 0]
        return logp, ref_logp, values, scores

    def run(policy, critic, rollout: Rollout):
        from jaxllm.train.step import shard_batch

        with jax.set_mesh(mesh):
            b = shard_batch({"seq": rollout.seq, "last": rollout.last}, mesh)
            out = score(policy, models.ref_params, critic, models.reward_params, b["seq"], b["last"])
        return [np.asarray(x) for x in jax.device_get(out)]

    return run


def _pad_rows(prompts: list[list[int]], multiple: int) -> tuple[list[list[int]], int]:
    """Prompts repeated up to a multiple of the data-parallel size; (rows, real count)."""
    n = len(prompts)
    return prompts + [prompts[0]] * ((-n) % multiple), n


def _sample(models: _Models, params, prompts: list[list[int]], seed: int, mesh) -> Rollout:
    from jaxllm.generation import generate

    cfg = models.cfg
    gen = generate(cfg, params, prompts, cfg.ppo.max_new_tokens, temperature=cfg.ppo.temperature, seed=seed,
                   stop_tokens=models.stop_tokens, stop_sequences=models.stop_sequences,
                   vocab_limit=models.vocab_limit, mesh=mesh, overflow="stop")  # fmt: skip
    return build_rollout(prompts, gen, cfg.model.max_seq_len)


def rollout_stats(rollout: Rollout, logp, ref_logp, scores, n: int | None = None) -> dict[str, float]:
    """Mean score, KL to the reference per reply (Σ log π − log π_ref over its tokens),
    reply length and share of replies that stopped, over the first n rows."""
    n = len(scores) if n is None else n
    kl = ((logp - ref_logp) * rollout.mask)[:n].sum(1)
    return {"reward": float(scores[:n].mean()), "kl": float(kl.mean()),
            "reply_tokens": float(rollout.mask[:n].sum(1).mean()),
            "stopped": float(rollout.stopped[:n].mean())}  # fmt: skip


def evaluate_policy(cfg: Config, params, prompts: list[list[int]], seed: int = 0) -> tuple[dict[str, float], list[str]]:
    """Sample one reply per prompt from `params` as PPO does (ppo.temperature), score it
    with ppo.reward_from and measure its KL to posttrain.init_from: (mean raw score, KL,
    reply length and stop share; the decoded replies, stop string removed)."""
    from jaxllm.chat import stop_string
    from jaxllm.parallel.mesh import make_mesh

    cfg = ppo_config(cfg)
    models, start = _load_models(cfg, lambda _: None)
    mesh = make_mesh(cfg.mesh)
    rows, n = _pad_rows(prompts, mesh.shape["data"] * mesh.shape["fsdp"])
    ro = _sample(models, params, rows, seed, mesh)
    logp, ref_logp, _, scores = _make_scorer(models, mesh)(params, start["critic"], ro)
    scores = scores - cfg.ppo.missing_stop_penalty * ~ro.stopped
    stop = stop_string(cfg.chat)
    replies = [models.tokenizer.decode(r).split(stop)[0] for r in ro.replies[:n]]
    return rollout_stats(ro, logp, ref_logp, scores, n), replies


def ppo(
    cfg: Config, log: Callable[[str], None] = print, stop_after: int | None = None, reset: bool = False
) -> TrainResult:
    """Train the policy in posttrain.init_from with PPO against ppo.reward_from; resumes
    the run in train.out_dir if it has checkpoints. Returns the run (val_losses holds
    the held-out mean reward at each evaluation). The run folder (policy and critic/) is
    locked for the run's life, as a training run's (train/run_folder.py)."""
    from jaxllm.train.run_folder import RunFolder, absolute_paths

    cfg = absolute_paths(ppo_config(cfg))
    _check(cfg)
    with RunFolder(cfg.train.out_dir, jax.process_index() == 0, log) as folder:
        if reset:
            folder.reset()
        return _ppo(cfg, folder, log, stop_after)


def _ppo(cfg: Config, folder, log: Callable[[str], None], stop_after: int | None) -> TrainResult:
    from jaxllm.parallel.mesh import make_mesh
    from jaxllm.posttrain.pairs import BatchCycle
    from jaxllm.train.checkpoint import Checkpointer
    from jaxllm.train.metrics import MetricsWriter
    from jaxllm.train.optimizer import make_optimizer
    from jaxllm.train.state import abstract_state, init_state, state_shardings
    from jaxllm.train.step import make_train_step, shard_batch
    from jaxllm.train.trainer import _format_time, _Signals, check_batch

    p, t = cfg.ppo, cfg.train
    if cfg.mesh.pipeline > 1:
        raise ConfigError("PPO does not run through the pipeline schedule yet; use mesh.pipeline=1")
    run_dir = folder.path
    models, start = _load_models(cfg, log)
    ccfg = models.critic_cfg
    train_prompts, val_prompts = _prompts(cfg, models.tokenizer)
    log(f"ppo: {len(train_prompts)} train / {len(val_prompts)} held-out prompts from {cfg.posttrain.data}")

    mesh = make_mesh(cfg.mesh)
    check_batch(cfg, mesh)
    multiple = mesh.shape["data"] * mesh.shape["fsdp"]
    tx, ctx = make_optimizer(cfg.optimizer), make_optimizer(ccfg.optimizer)
    shardings, cshardings = state_shardings(cfg, mesh, tx), state_shardings(ccfg, mesh, ctx)
    models.ref_params = jax.device_put(start["policy"], shardings["params"])
    models.reward_params = jax.device_put(models.reward_params, cshardings["params"])
    ckpt = Checkpointer(run_dir / "checkpoints", keep=t.keep_checkpoints, keep_every=t.keep_every)
    cckpt = Checkpointer(Path(ccfg.train.out_dir) / "checkpoints", keep=t.keep_checkpoints, keep_every=t.keep_every)
    prompts = BatchCycle(train_prompts, t.seed)
    scorer = _make_scorer(models, mesh)  # one jitted forward, for the normalisation sample and every rollout
    kl_coef, iteration = p.kl_coef, 0

    restored = ckpt.restore_latest(abstract_state(cfg, tx, shardings), log, to_dict(cfg), folder.quarantine)
    crestored = (
        cckpt.restore_latest(abstract_state(ccfg, ctx, cshardings), log, to_dict(ccfg), folder.quarantine / "critic")
        if restored
        else None
    )
    if restored is not None and crestored is not None and crestored[0] == restored[0]:
        step0, state, data_state, _ = restored
        cstate = crestored[1]
        prompts.set_state(data_state["prompts"])
        kl_coef, iteration = float(data_state["kl_coef"]), int(data_state["iteration"])
        norm = (float(data_state["score_mean"]), float(data_state["score_std"]))
        log(f"resumed from {ckpt.directory}/{step0} (step {step0}, iteration {iteration}, kl_coef {kl_coef:.4g})")
    else:
        if restored is not None:
            raise DataError(f"{run_dir}: the policy checkpoint (step {restored[0]}) has no critic checkpoint of the "
                            f"same step in {cckpt.directory}; start over with `jaxllm ppo ... --reset` (it "
                            "archives the old run) or give a new train.out_dir")  # fmt: skip
        step0 = 0

        def fresh(c, opt, sh, params):
            s = init_state(c, mesh, opt)
            copy = jax.jit(lambda x: jax.tree.map(jnp.copy, x), out_shardings=sh["params"])
            placed = copy(params)  # new buffers: the train step donates them, the reference keeps its own
            return {**s, "params": placed, "opt_state": jax.jit(opt.init, out_shardings=sh["opt_state"])(placed)}

        state = fresh(cfg, tx, shardings, start["policy"])
        norm = (0.0, 1.0)
        if p.normalize_reward:
            picks = np.random.default_rng(t.seed).choice(len(train_prompts), p.rollout_batch)
            ro = _sample(models, state["params"], [train_prompts[i] for i in picks], t.seed + 7, mesh)
            scores = scorer(state["params"], start["critic"], ro)[3] - p.missing_stop_penalty * ~ro.stopped
            norm = (float(scores.mean()), float(scores.std()) + 1e-6)
            log(f"ppo: reward-model scores of the starting policy: mean {norm[0]:.4f}, std {norm[1]:.4f}; "
                "the policy learns from (score - mean) / std")  # fmt: skip
        # The critic keeps the reward model's features but not its head: that was trained at the
        # last token only, and its values elsewhere are far off (several σ), further than the
        # clipped value loss lets a value move per rollout. Zero is the mean normalised return.
        critic_start = {**start["critic"], "score": jnp.zeros_like(start["critic"]["score"])}
        cstate = fresh(ccfg, ctx, cshardings, critic_start)
    del start
    folder.write_config(cfg)  # only now: the config validated and the checkpoints restored
    if folder.primary:
        Path(ccfg.train.out_dir).mkdir(parents=True, exist_ok=True)
        save_config(ccfg, Path(ccfg.train.out_dir) / "config.yaml")  # `load_run RUN_DIR/critic` works

    policy_step = make_train_step(cfg, mesh, tx, policy_loss_fn(p.temperature, models.vocab_limit, p.clip))
    critic_step = make_train_step(ccfg, mesh, ctx, critic_loss_fn(p.value_clip))
    # warm-up fits the starting policy's returns freely: no clip to keep it near old values
    warmup_step = make_train_step(ccfg, mesh, ctx, critic_loss_fn(math.inf)) if p.critic_warmup else None
    gae = jax.jit(ppo_math.gae, static_argnums=(3, 4))
    per_rollout = p.epochs * (p.rollout_batch // t.batch_size)
    last_step = min(t.steps, stop_after) if stop_after is not None else t.steps
    writer = MetricsWriter(run_dir, tensorboard=t.tensorboard)
    result = TrainResult(run_dir, step0, {}, {})
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    log(f"run {run_dir}: {n_params:,}-param policy + critic on mesh {dict(mesh.shape)}; {t.steps} policy updates = "
        f"{math.ceil(t.steps / per_rollout)} rollouts of {p.rollout_batch} prompts x {p.epochs} epochs of "
        f"{p.rollout_batch // t.batch_size} minibatches")  # fmt: skip

    def evaluate(step: int) -> None:
        if not val_prompts:
            return
        rows, n = _pad_rows(val_prompts, multiple)
        ro = _sample(models, state["params"], rows, t.seed + 1_000_003, mesh)  # the same draws at every evaluation
        logp, ref_logp, _, scores = scorer(state["params"], cstate["params"], ro)
        scores = scores - p.missing_stop_penalty * ~ro.stopped
        stats = rollout_stats(ro, logp, ref_logp, scores, n)
        writer.write(step, "val", stats)
        result.val_losses[step] = stats["reward"]
        log(f"step {step}: held-out reward {stats['reward']:.4f} | KL {stats['kl']:.3f} | "
            f"{stats['reply_tokens']:.1f} tokens/reply | stopped {stats['stopped']:.0%}")  # fmt: skip

    def save(step: int) -> None:
        data = {"prompts": prompts.get_state(), "kl_coef": kl_coef, "iteration": iteration,
                "score_mean": norm[0], "score_std": norm[1]}  # fmt: skip
        ckpt.save(step, state, data, to_dict(cfg), force=True)
        cckpt.save(step, cstate, data, to_dict(ccfg), force=True)

    def rollout(index: int) -> tuple[float, dict, dict]:
        """Sample, score and compute advantages for the next `rollout_batch` prompts:
        (seconds spent sampling, the training arrays, rollout statistics)."""
        t0 = time.perf_counter()
        batch_prompts = [next(prompts) for _ in range(p.rollout_batch)]
        ro = _sample(models, state["params"], batch_prompts, t.seed * 7919 + index, mesh)
        t_sample = time.perf_counter() - t0
        logp, ref_logp, values, scores = scorer(state["params"], cstate["params"], ro)
        scores = scores - p.missing_stop_penalty * ~ro.stopped
        rewards, _ = ppo_math.token_rewards(logp, ref_logp, (scores - norm[0]) / norm[1], ro.mask, kl_coef)
        adv, returns = gae(rewards, values * ro.mask, ro.mask, p.gamma, p.lam)
        adv = ppo_math.whiten(adv, ro.mask)
        data = {"seq": ro.seq, "mask": ro.mask, "old_logprobs": logp, "advantages": np.asarray(adv),
                "old_values": values * ro.mask, "returns": np.asarray(returns)}  # fmt: skip
        return t_sample, data, rollout_stats(ro, logp, ref_logp, scores)

    def minibatches(data: dict, index: int):
        """ppo.epochs shuffled passes over a rollout in sharded minibatches of train.batch_size rows."""
        rng = np.random.default_rng((t.seed, index))
        for _ in range(p.epochs):
            order = rng.permutation(p.rollout_batch)
            for i in range(0, p.rollout_batch, t.batch_size):
                yield shard_batch({k: v[order[i : i + t.batch_size]] for k, v in data.items()}, mesh)

    run_start = time.perf_counter()
    step = step0
    with _Signals() as signals:
        try:
            if step == 0:
                evaluate(0)
                for k in range(p.critic_warmup):  # the critic learns the starting policy's values first
                    _, data, stats = rollout(1_000_000 + k)
                    losses = []
                    for mb in minibatches(data, 1_000_000 + k):
                        cstate, m = warmup_step(cstate, mb)
                        losses.append(float(jax.device_get(m["loss"])))
                    writer.write(0, "critic_warmup", {"rollout": k + 1, "value_loss": float(np.mean(losses))})
                    log(f"critic warmup {k + 1}/{p.critic_warmup}: value loss {np.mean(losses):.4f} "
                        f"(reward {stats['reward']:.3f})")  # fmt: skip
            while step < last_step:
                t0 = time.perf_counter()
                t_sample, data, stats = rollout(iteration)
                sums: dict[str, float] = {}
                updates = 0
                for mb in minibatches(data, iteration):
                    if step >= last_step:
                        break
                    state, pm = policy_step(state, mb)
                    cstate, cm = critic_step(cstate, mb)
                    step += 1
                    updates += 1
                    pm, cm = jax.device_get((pm, cm))
                    if not (bool(pm["finite"]) and bool(cm["finite"])):
                        log(f"warning: non-finite PPO loss at step {step}; that update was skipped")
                    for k, v in {"policy_loss": pm["loss"], "clip_frac": pm["clip_frac"],
                                 "approx_kl": pm["approx_kl"], "entropy": pm["entropy"], "grad_norm": pm["grad_norm"],
                                 "value_loss": cm["loss"], "value_error": cm["value_error"]}.items():  # fmt: skip
                        sums[k] = sums.get(k, 0.0) + float(v)
                if p.adaptive_kl:
                    kl_coef = ppo_math.adaptive_kl(kl_coef, stats["kl"], p.kl_target, p.rollout_batch, p.kl_horizon)
                iteration += 1
                dt = time.perf_counter() - t0
                values_log = {**stats, **{k: v / max(updates, 1) for k, v in sums.items()}, "kl_coef": kl_coef,
                              "lr": float(pm["lr"]), "iteration": iteration, "rollout_s": t_sample,
                              "iteration_s": dt}  # fmt: skip
                writer.write(step, "train", values_log)
                result.train_losses[step] = values_log["policy_loss"]
                eta = (time.perf_counter() - run_start) / max(step - step0, 1) * (last_step - step)
                frac = step / last_step
                bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
                log(f"[{bar}] step {step}/{last_step} | rollout {iteration} | reward {stats['reward']:.3f} | "
                    f"KL {stats['kl']:.3f} (coef {kl_coef:.3g}) | policy {values_log['policy_loss']:.4f} | "
                    f"value {values_log['value_loss']:.4f} | clip {values_log['clip_frac']:.2f} | "
                    f"{stats['reply_tokens']:.1f} tok/reply | {dt:.1f} s/rollout | "
                    f"ETA {_format_time(eta)}")  # fmt: skip
                crossed = (step // t.eval_every) > ((step - updates) // t.eval_every)
                if crossed or step >= last_step:
                    evaluate(step)
                if (step // t.checkpoint_every) > ((step - updates) // t.checkpoint_every) or step >= last_step:
                    save(step)
                if signals.received is not None:
                    save(step)
                    result.interrupted = signals.received
                    log(f"received signal {signals.received} at step {step}: checkpoint saved, stopping")
                    break
        finally:
            ckpt.wait()
            cckpt.wait()
            writer.close()
    ckpt.close()
    cckpt.close()
    result.step = step
    if result.interrupted is None:
        log(f"done: step {step} in {_format_time(time.perf_counter() - run_start)}; policy checkpoints in "
            f"{ckpt.directory}, critic in {cckpt.directory}, metrics in {run_dir / 'metrics.jsonl'}")  # fmt: skip
    return result
