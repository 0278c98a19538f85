"""`jaxllm plan`: the memory it reports is the compiled step's memory_analysis(), its
FLOP count matches the analytic one, layouts that do not fit say so, and TPU
topologies (fake devices from libtpu) plan on this CPU-only host."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import numpy as np
import pytest

import jaxllm
from jaxllm.cli import main
from jaxllm.model.summary import flops_per_token
from jaxllm.parallel.mesh import make_mesh
from jaxllm.plan import _torus, compile_train_step, compiler_estimates, get_topology, plan
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.state import init_state
from jaxllm.train.step import make_train_step, shard_batch

SMALL = ["model.vocab_size=256", "model.max_seq_len=64", "model.d_model=64", "model.num_layers=4",
         "model.num_heads=4", "model.dropout=0.0", "data.seq_len=64", "train.batch_size=16"]  # fmt: skip


def small(*extra: str) -> jaxllm.Config:
    return jaxllm.load_config("shakespeare-char", [*SMALL, *extra])


def test_memory_is_the_compiled_steps_memory_analysis():
    cfg = small("mesh.fsdp=2", "mesh.tensor=2")
    result = plan(cfg, get_topology("cpu:8"))
    # the same step compiled independently, from real arrays
    mesh = make_mesh(cfg.mesh, jax.devices()[:8])
    tx = make_optimizer(cfg.optimizer)
    state = init_state(cfg, mesh, tx)
    rows = np.zeros((cfg.train.batch_size, cfg.data.seq_len), np.int32)
    batch = shard_batch({k: rows for k in ("inputs", "targets", "segment_ids", "positions", "target_mask")}, mesh)
    with jax.set_mesh(mesh):
        mem = make_train_step(cfg, mesh, tx).jitted.lower(state, batch).compile().memory_analysis()
    assert result.argument_bytes == mem.argument_size_in_bytes
    assert result.temp_bytes == mem.temp_size_in_bytes
    assert result.output_bytes == max(0, mem.output_size_in_bytes - mem.alias_size_in_bytes)
    # and the arguments are what each device holds of the state and the batch
    held = sum(s.data.nbytes for leaf in jax.tree.leaves((state, batch)) for s in leaf.addressable_shards[:1])
    assert result.argument_bytes == held
    assert result.mesh == {"data": 2, "fsdp": 2, "context": 1, "expert": 1, "tensor": 2, "pipeline": 1}


def test_compiler_flops_count_every_layer_and_match_the_analytic_count():
    cfg = small()
    devices = jax.devices()[:8]
    flops, _ = compiler_estimates(cfg, devices)
    # the extrapolation from 1- and 2-layer probes equals compiling all 4 layers unrolled
    unrolled = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_unroll=True))
    direct = compile_train_step(unrolled, devices)[1].cost_analysis()
    direct = direct[0] if isinstance(direct, list) else direct
    assert flops == pytest.approx(direct["flops"], rel=1e-3)
    # the scanned step alone would count one layer's body
    scanned = compile_train_step(cfg, devices)[1].cost_analysis()
    scanned = scanned[0] if isinstance(scanned, list) else scanned
    assert scanned["flops"] < 0.7 * flops
    analytic = flops_per_token(cfg, cfg.data.seq_len) * cfg.train.batch_size * cfg.data.seq_len / 8
    assert 0.95 < flops / analytic < 1.25
    # the loss in 4 chunks: the probes count all 4 chunks' heads, plus the forward of the
    # head that the backward recomputes (2 E V FLOPs per token), not one chunk's
    chunked, _ = compiler_estimates(small("model.loss_chunk=16"), devices)
    m = cfg.model
    recompute = 2 * m.d_model * m.vocab_size * cfg.train.batch_size * cfg.data.seq_len / 8
    assert chunked == pytest.approx(flops + recompute, rel=0.02), (chunked, flops, recompute)


def test_a_layout_that_does_not_fit_says_by_how_much(capsys):
    result = plan(small(), get_topology("cpu:8"), hbm_bytes=1e6)
    assert result.fits is False
    short = (result.total_bytes - 1e6) / 2**30
    assert f"does not fit by {short:,.2f} GiB" in result.table()
    # The CLI, with the overrides after the options as the docs write them (argparse stops a
    # positional list at the first option): the same small model, so the same shortfall.
    code = main(["plan", "shakespeare-char", "--topology", "cpu:8", "--hbm-gib", "0.001", *SMALL])
    assert code == 3 and f"NO: does not fit by {short:,.2f} GiB" in capsys.readouterr().out


def test_topology_names():
    assert _torus(64, 3) == "4x4x4" and _torus(16, 2) == "4x4" and _torus(32, 2) == "4x8" and _torus(8, 3) == "2x2x2"
    assert _torus(4, 3) == "2x2x1" and _torus(2, 2) == "2x1"  # v5p-8, whose host holds 2x2x1 chips
    for bad, match in (("v9-8", "unknown"), ("v5p-7", "N must be even"), ("tpu-8", "not a topology"),
                       ("v5e-12", "powers of two"), ("cpu:999", "needs 999 CPU devices"),
                       ("cpu:0", "has no devices")):  # fmt: skip
        with pytest.raises(jaxllm.ConfigError, match=match):
            get_topology(bad)


def test_plans_a_tpu_slice_from_a_cpu_host():
    """libtpu (the [tpu] extra, installed for the tests) describes a v5e 2x2 slice; the
    step compiles for its four fake chips and the compiler estimates the step time."""
    topology = get_topology("v5e-4")
    assert len(topology.devices) == 4 and "v5" in topology.device_kind.lower()
    assert len(get_topology("v5p-8").devices) == 4  # one host's 2x2x1 chips
    result = plan(small("mesh.fsdp=4", "mesh.data=1", "model.dtype=bfloat16"), topology)
    assert result.fits and result.hbm_bytes == 16 * 2**30
    assert result.estimated_seconds > 0 and 0 < result.mfu < 1
    assert math.isclose(result.compiler_flops / (result.analytic_flops / 4), 1.0, rel_tol=0.3)
    assert "estimated MFU" in result.table()


def test_a_mesh_axis_smaller_than_a_torus_side_is_placed():
    """pipeline 2 on a 4x4x4 v5p slice needs part of a physical axis: the mesh splits one."""
    from jaxllm.config import MeshConfig

    mesh = make_mesh(MeshConfig(data=1, fsdp=8, tensor=4, pipeline=2), get_topology("v5p-128").devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "context": 1, "expert": 1, "tensor": 4, "pipeline": 2}
    assert len({d.id for d in mesh.devices.flat}) == 64


def test_a_mesh_that_cannot_split_a_parameter_is_a_clear_error(capsys):
    code = main(["plan", "shakespeare-char", *SMALL, "model.vocab_size=257", "mesh.data=4", "mesh.tensor=2",
                 "--topology", "cpu:8"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "wte.embedding: dimension 0 of shape (257, 64) has size 257" in err
    assert "mesh axes tensor = 2 devices cannot split evenly; set model.vocab_size to a multiple of 2" in err
    code = main(["plan", "shakespeare-char", *SMALL, "model.d_model=66", "model.num_heads=6", "mesh.data=2",
                 "mesh.fsdp=4", "--topology", "cpu:8"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "has size 66, which the mesh axes fsdp = 4 devices cannot split" in err


def test_an_unknown_option_among_the_overrides_is_an_error():
    """Overrides may follow the options (test_a_layout_that_does_not_fit_says_by_how_much);
    an unknown option there is still refused."""
    with pytest.raises(SystemExit):
        main(["plan", "shakespeare-char", "--topology", "cpu:8", "--bogus", *SMALL])


def test_kernel_work_is_added_to_the_compiler_estimate_and_said():
    """Pallas kernels are invisible to cost_analysis(): the plan adds their analytic causal
    attention FLOPs at the chip's peak, shows both figures, and takes MFU from the sum."""
    from jaxllm.plan import Plan, kernel_work

    cfg = small("model.remat=full")
    L, T, H, D, B = 4, 64, 4, 16, 16
    assert kernel_work(cfg, 8) == L * T * H * D * (6 + 2) * B * T / 8  # forward, backward, remat's forward again
    assert kernel_work(small(), 8) == L * T * H * D * 6 * B * T / 8
    fields = dict(topology="v5p-8", device_kind="TPU v5", devices=4, mesh={"fsdp": 4}, argument_bytes=1,
                  temp_bytes=1, output_bytes=0, hbm_bytes=2**30, compiler_flops=1e9, analytic_flops=4e12,
                  estimated_seconds=0.5, peak_flops=1e12, tokens_per_step=1024)  # fmt: skip
    without, with_kernels = Plan(**fields), Plan(**fields, kernel_calls=3, kernel_seconds=0.25)
    assert without.step_seconds == 0.5 and with_kernels.step_seconds == 0.75
    assert with_kernels.mfu == pytest.approx(4e12 / (0.75 * 4 * 1e12)) and with_kernels.mfu < without.mfu
    table = with_kernels.table()
    assert "500.0 ms (compiler's estimate)" in table and "+ 250.0 ms: 3 attention kernel calls" in table
    assert "= 750.0 ms" in table and "attention kernel" not in without.table()
    causal = Plan(**fields, causal_attention_flops=1e12)  # a quarter of the analytic count is masked attention
    assert causal.causal_mfu == pytest.approx(0.75 * causal.mfu) and "(150.0% counting causal" in causal.table()


def test_collectives_are_counted_and_a_gather_through_an_all_reduce_is_named():
    from jaxllm.hlo import PADDED_GATHER, collectives

    text = """
  %all-gather.3 = bf16[1,768,2048]{2,1,0} all-gather(%param.10), channel_id=9, dimensions={1}
  %all-reduce.5 = (bf16[768,32000]{1,0}, f32[768]{0}) all-reduce(%constant_dynamic-update-slice_fusion.2, %p)
  ROOT %all-reduce.7 = f32[2048,768]{1,0} all-reduce(%fusion.1), channel_id=46, to_apply=%add
  %all-gather-start = (f32[8]{0}, f32[64]{0}) all-gather-start(%x), dimensions={0}
  %all-gather-done = f32[64]{0} all-gather-done(%all-gather-start)
  %reduce-scatter.1 = f32[96,768]{1,0} reduce-scatter(%g), dimensions={0}
"""
    assert collectives(text) == {"all-gather": 2, PADDED_GATHER: 1, "all-reduce": 1, "reduce-scatter": 1}


def test_fsdp_weights_arrive_by_all_gathers_on_a_tpu_slice():
    """4-way FSDP on libtpu's v5p-8 (2x2x1 chips): the layer's weight matrices are gathered
    by all-gathers; only vectors (the norms' scales, latency-bound) go through padded
    all-reduces. (libtpu gathers everything that way in groups spanning a whole 4x4x4
    torus; docs/performance.md, "FSDP collectives".)"""
    from jaxllm.hlo import PADDED_GATHER, collectives

    cfg = small("mesh.data=1", "mesh.fsdp=4", "model.dtype=bfloat16", "model.num_layers=1")
    text = compile_train_step(cfg, get_topology("v5p-8").devices)[1].as_text()
    counts = collectives(text)
    assert counts.get("all-gather", 0) >= 4, counts  # q/k/v/o and the MLP's two matrices, some combined
    padded = [line for line in text.splitlines() if " all-reduce(" in line and "dynamic-update-slice" in line]
    assert len(padded) == counts.get(PADDED_GATHER, 0)
    shapes = [re.findall(r"[a-z]+\d*\[([\d,]*)\]", line.split(" all-reduce(")[0]) for line in padded]
    assert all("," not in dims for shape in shapes for dims in shape), padded  # 1-D arrays only


def test_memory_only_skips_the_probes_and_says_so():
    result = plan(small("mesh.fsdp=2", "mesh.tensor=2"), get_topology("cpu:8"), estimate=False)
    assert not result.estimated and result.compiler_flops is None and result.temp_bytes > 0
    table = result.table()
    assert "not estimated (--memory-only" in table and "all-reduce" in table and "collectives" in table


def test_sequence_parallelism_shrinks_what_remat_keeps_under_tensor_parallelism():
    """The residual stream between blocks is split along its length over `tensor` (the
    `sequence` rule): with full remat each layer's kept input is a quarter per device at
    tensor 4. Turning the rule off (`mesh.rules=[sequence=]`) holds them whole."""
    sizes = ["model.max_seq_len=512", "data.seq_len=512", "model.d_model=256", "train.batch_size=8", "mesh.data=2",
             "mesh.tensor=4", "model.remat=full"]  # fmt: skip
    temps = {}
    for rules in ((), ("mesh.rules=[sequence=]",)):
        cfg = small(*sizes, *rules)
        temps[rules] = compile_train_step(cfg, jax.devices()[:8])[1].memory_analysis().temp_size_in_bytes
    m = cfg.model
    kept = m.num_layers * (cfg.train.batch_size // 2) * cfg.data.seq_len * m.d_model * 4  # float32 block inputs
    assert temps[()] <= temps[("mesh.rules=[sequence=]",)] - 0.75 * kept, temps
