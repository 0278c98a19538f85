"""Will it fit, and how fast could it be? Ahead-of-time planning for a target topology.

`jaxllm plan CONFIG --topology v5p-128` builds the run's real mesh over the devices of
the target (fake TPU devices described by libtpu, from any host: no TPU needed), lowers
and compiles the real train step for them, and reads the compiler's own answers:
  memory_analysis()  bytes per device: arguments (params, optimizer state, batch),
                     temporaries (activations, gradients, collectives' buffers),
                     outputs not aliased to donated arguments
  cost_analysis()    FLOPs per device of one step and, on TPU, the compiler's estimate
                     of the step time (`optimal_seconds`)
beside the analytic count (jaxllm/model/summary.py: 6N + attention per token), so an
MFU estimate follows: analytic model FLOPs / (estimated step time x devices x peak).

Topologies:
  cpu:N                 N host CPU devices (runs anywhere; no HBM limit unless --hbm-gib)
  v4-N, v5p-N           N TensorCores (2 per chip: v5p-128 is 64 chips), a 3D torus
  v5e-N, v6e-N          N chips, a 2D torus (v5litepod-N is v5e-N)
  GEN:AxBxC             an explicit libtpu topology, e.g. v5p:4x4x4 or v5e:4x8
`--slices K` replicates the topology K times (multi-slice over DCN); `data` spans the
slices, every other mesh axis stays inside one (jaxllm/parallel/mesh.py, `make_mesh`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
import numpy as np

from jaxllm.config import Config, ConfigError
from jaxllm.hlo import collectives, kernel_calls
from jaxllm.model.summary import attended_keys, causal_keys, flops_breakdown
from jaxllm.parallel.layout import Layout
from jaxllm.parallel.mesh import batch_sharding, device_slices, make_mesh
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.state import abstract_state
from jaxllm.train.step import make_train_step
from jaxllm.train.task import check_batch

GiB = 2**30

# generation -> (HBM bytes per chip, dense bf16 FLOP/s per chip, TensorCores per chip in
# the "-N" name, dimensions of the torus). Vendor figures.
TPU_CHIPS = {
    "v4": (32 * GiB, 275e12, 2, 3),
    "v5p": (95 * GiB, 459e12, 2, 3),
    "v5e": (16 * GiB, 197e12, 1, 2),
    "v6e": (32 * GiB, 918e12, 1, 2),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    devices: list
    device_kind: str
    hbm_bytes: float | None  # per device; None: unknown (CPU)
    peak_flops: float | None  # per device, dense bf16


def _torus(chips: int, dims: int) -> str:
    """The most cube-like A x B (x C) shape with `chips` chips, sides powers of two, as
    Cloud TPU slices are (v5p-128 = 64 chips = 4x4x4; v5e-32 = 4x8)."""
    if chips < 1 or chips & (chips - 1):
        raise ConfigError(f"{chips} chips: TPU slices come in powers of two")
    sides = [1] * dims
    k = 0
    while math.prod(sides) < chips:
        sides[k % dims] *= 2
        k += 1
    # Sides of 1 go last: libtpu divides the shape by the host's 2x2x1 chips, so a 4-chip
    # v5p-8 is 2x2x1 (1x2x2 is refused).
    return "x".join(str(s) for s in sorted(sides, key=lambda s: (s == 1, s)))


def _tpu_topology(name: str, slices: int) -> Topology:
    m = re.fullmatch(r"(v\d+[a-z]*)(?:-(\d+)|:(\d+(?:x\d+)+))", name)
    if not m:
        raise ConfigError(
            f"--topology {name!r} is not a topology; use cpu:N, v4-N, v5p-N, v5e-N, v6e-N or GEN:AxBxC (e.g. v5p:4x4x4)"
        )
    gen = _ALIASES.get(m.group(1), m.group(1))
    if gen not in TPU_CHIPS:
        raise ConfigError(f"TPU generation {m.group(1)!r} is unknown; known: {', '.join(TPU_CHIPS)}")
    hbm, peak, cores_per_chip, dims = TPU_CHIPS[gen]
    if m.group(2):
        cores = int(m.group(2))
        if cores % cores_per_chip:
            raise ConfigError(f"{name}: {gen}-N counts TensorCores, {cores_per_chip} per chip; N must be even")
        shape = _torus(cores // cores_per_chip, dims)
    else:
        shape = m.group(3)
    # libtpu guards real chips with a lockfile, one process at a time; describing a
    # topology and compiling for it touch no chip, so planners may run side by side.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies  # slow import (the TPU topology machinery), planning only

        desc = topologies.get_topology_desc(
            platform="tpu",
            topology_name=f"{gen}:{shape}",
            chip_config_name="default",
            chips_per_host_bounds=(2, 2, 1),
            num_slices=slices,
        )
    except Exception as e:  # no libtpu, or a shape libtpu rejects
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"cannot describe TPU topology {gen}:{shape} ({first}); planning for TPUs needs libtpu: "
            "pip install -e '.[tpu]' (no TPU required)"
        ) from None
    devices = list(desc.devices)
    return Topology(f"{name} ({gen}:{shape}{f' x {slices} slices' if slices > 1 else ''})", devices,
                    devices[0].device_kind, float(hbm), peak)  # fmt: skip


def _cpu_topology(n: int) -> Topology:
    if n < 1:
        raise ConfigError(f"cpu:{n} has no devices; give cpu:N with N >= 1, e.g. cpu:8")
    devices = jax.devices("cpu")
    if len(devices) < n:
        raise ConfigError(
            f"cpu:{n} needs {n} CPU devices but this process has {len(devices)}; "
            f"set XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting"
        )
    return Topology(f"cpu:{n}", devices[:n], devices[0].device_kind, None, None)


def get_topology(name: str, slices: int = 1) -> Topology:
    """The devices of a named topology (real CPU devices, or libtpu's fake TPU devices)."""
    if slices < 1:
        raise ConfigError(f"--slices={slices} must be at least 1")
    m = re.fullmatch(r"cpu:(\d+)", name)
    if m:
        if slices != 1:
            raise ConfigError("--slices applies to TPU topologies only")
        return _cpu_topology(int(m.group(1)))
    return _tpu_topology(name, slices)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the compiler says about one train step of `config` on `topology`."""

    topology: str
    device_kind: str
    devices: int
    mesh: dict[str, int]
    argument_bytes: int  # per device
    temp_bytes: int
    output_bytes: int  # outputs that do not reuse a donated argument's buffer
    hbm_bytes: float | None
    compiler_flops: float | None  # per device per step, from cost_analysis
    analytic_flops: float  # whole step, all devices (6N + attention per token)
    estimated_seconds: float | None  # the compiler's estimate of the step time (TPU)
    peak_flops: float | None
    tokens_per_step: int
    refused: str | None = None  # the compiler's out-of-memory message, when it would not compile the step
    kernel_calls: int = 0  # Pallas kernels (custom calls) in the compiled step: work cost_analysis cannot see
    kernel_seconds: float | None = None  # their analytic work per device at the chip's peak (see kernel_work)
    collectives: dict[str, int] = dataclasses.field(default_factory=dict)  # in the compiled step (jaxllm/hlo.py)
    estimated: bool = True  # False: the time estimate's probes were not compiled (`--memory-only`)
    host_temp_bytes: int = 0  # per device, in host memory (activations offloaded by model.remat=offload)
    causal_attention_flops: float = 0.0  # the half of analytic_flops' attention term a causal mask skips
    slices: int = 1  # TPU slices joined over DCN; `data` spans them

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.temp_bytes + self.output_bytes

    @property
    def fits(self) -> bool | None:
        if self.refused:
            return False
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    @property
    def step_seconds(self) -> float | None:
        """The estimate to quote: the compiler's, plus the kernels' work it does not count."""
        if not self.estimated_seconds:
            return None
        return self.estimated_seconds + (self.kernel_seconds or 0.0)

    @property
    def mfu(self) -> float | None:
        if not self.step_seconds or not self.peak_flops:
            return None
        return self.analytic_flops / (self.step_seconds * self.devices * self.peak_flops)

    @property
    def causal_mfu(self) -> float | None:
        """MFU counting only the attention work a causal mask leaves (PaLM's 12 L T H D counts
        the whole T x T product; the kernels skip the masked half): lower, at long T much lower."""
        if self.mfu is None:
            return None
        return self.mfu * (1 - self.causal_attention_flops / self.analytic_flops)

    def table(self) -> str:
        gib = lambda b: f"{b / GiB:,.2f} GiB"  # noqa: E731
        rows = [
            ("topology", f"{self.topology}: {self.devices} x {self.device_kind}"),
            ("mesh", " x ".join(f"{k} {v}" for k, v in self.mesh.items())
                     + (f" (data over {self.slices} slices, DCN)" if self.slices > 1 else "")),
            ("arguments / device", f"{gib(self.argument_bytes)} (params, optimizer state, batch)"),
            ("temporaries / device", f"{gib(self.temp_bytes)} " + ("(the compiler's figure when it gave up)"
                                     if self.refused else "(activations, gradients, collective buffers)")),
            ("outputs / device", f"{gib(self.output_bytes)} (not aliased to donated inputs)"),
            ("total / device", gib(self.total_bytes)),
        ]
        if self.host_temp_bytes:
            rows.append(("host memory / device", f"{gib(self.host_temp_bytes)} (offloaded activations)"))
        if self.refused:
            rows.append(("compiler", f"refused the step: {self.refused[:200]}"))
        if self.collectives:
            rows.append(("collectives", ", ".join(f"{n} {op}" for op, n in sorted(self.collectives.items()))
                         + " (in the program text; a loop body once)"))
        if self.hbm_bytes is None:
            rows.append(("fits", "unknown (no memory limit for this device; set --hbm-gib)"))
        elif self.fits:
            rows.append(("fits", f"yes: {gib(self.hbm_bytes - self.total_bytes)} to spare of {gib(self.hbm_bytes)}"))
        else:
            rows.append(("fits", f"NO: does not fit by {gib(self.total_bytes - self.hbm_bytes)} "
                                 f"({gib(self.hbm_bytes)} per device)"))  # fmt: skip
        per_device = self.analytic_flops / self.devices
        rows.append(("FLOPs / device / step", f"{per_device:.4g} analytic (6N, 4N for a frozen LoRA base, + "
                                               f"attention per token, {self.tokens_per_step:,} tokens)"))  # fmt: skip
        if self.compiler_flops is not None:
            rows.append(("", f"{self.compiler_flops:.4g} compiler (cost_analysis; "
                             f"{self.compiler_flops / per_device:.2f}x analytic)"))  # fmt: skip
        if self.estimated_seconds:
            rows.append(("estimated step time", f"{self.estimated_seconds * 1e3:,.1f} ms (compiler's estimate)"))
            if self.kernel_calls:
                rows.append(("", f"+ {(self.kernel_seconds or 0) * 1e3:,.1f} ms: {self.kernel_calls} attention kernel "
                                 "calls, analytic causal FLOPs at peak (the compiler counts none of their work)"))
                rows.append(("", f"= {self.step_seconds * 1e3:,.1f} ms (the estimate used below)"))
            rows.append(("tokens/s", f"{self.tokens_per_step / self.step_seconds:,.0f}"))
        elif not self.estimated:
            rows.append(("estimated step time", "not estimated (--memory-only: the probes were not compiled)"))
        elif self.kernel_calls:
            rows.append(("attention kernels", f"{self.kernel_calls} calls; no compiler estimate to add their work to"))
        if self.mfu is not None:
            rows.append(("estimated MFU", f"{self.mfu:.1%} of {self.peak_flops / 1e12:.0f} TFLOP/s bf16 per device "
                                          f"({self.causal_mfu:.1%} counting causal attention only)"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:>{width}}  {v}" for k, v in rows)


def abstract_batch(cfg: Config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes of one global batch, sharded as the trainer places it."""
    shape = (cfg.train.batch_size, cfg.data.seq_len)
    sharding = batch_sharding(mesh)
    keys = ("inputs", "targets", "segment_ids", "positions", "target_mask")
    return {k: jax.ShapeDtypeStruct(shape, np.int32, sharding=sharding) for k in keys}


def compile_train_step(cfg: Config, devices: list):
    """(mesh, compiled step) of `cfg` over `devices`, ahead of time: nothing is allocated."""
    mesh = make_mesh(cfg.mesh, devices)
    check_batch(cfg, mesh)
    tx = make_optimizer(cfg.optimizer, cfg.model)
    layout = Layout.build(cfg, mesh, tx)  # one layout for the abstract state and the step
    state = abstract_state(cfg, tx, layout.state)
    step = make_train_step(cfg, layout, tx)
    with jax.set_mesh(mesh):
        return mesh, step.jitted.lower(state, abstract_batch(cfg, mesh)).compile()


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _argument_bytes(cfg: Config, devices: list):
    """(mesh, bytes of the step's inputs on one device), from the shardings alone."""
    mesh = make_mesh(cfg.mesh, devices)
    tx = make_optimizer(cfg.optimizer, cfg.model)
    leaves = jax.tree.leaves((abstract_state(cfg, tx, Layout.build(cfg, mesh, tx).state), abstract_batch(cfg, mesh)))
    return mesh, sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)


def _required_temporaries(message: str) -> int:
    """The temporaries' size the compiler reported when it ran out of memory
    (XLA writes sizes as e.g. "107.93G", in binary units)."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    sizes = re.findall(r"\((\d+(?:\.\d+)?)([KMGT])\)", message) or re.findall(r"(\d+(?:\.\d+)?)([KMGT])", message)
    return int(float(sizes[0][0]) * units[sizes[0][1]]) if sizes else 0


def _with_layers(cfg: Config, num_layers: int) -> Config:
    model = dataclasses.replace(cfg.model, num_layers=num_layers, scan_unroll=True)
    return dataclasses.replace(cfg, model=model)


def compiler_estimates(cfg: Config, devices: list) -> tuple[float | None, float | None]:
    """(FLOPs per device, estimated seconds) of one step, counting every layer.

    XLA's cost analysis counts a loop body once, and jaxllm's layers are a loop (the
    scan, and the pipeline schedule's ticks). So two small probes are compiled with
    every loop unrolled, with one and two layers per pipeline chunk (k = stages x
    repeats and 2k layers), and both figures are extrapolated linearly to the real
    depth: cost(L) = cost(k) + (L / k - 1) * (cost(2k) - cost(k)). Exact for FLOPs
    (every layer costs the same); the time estimate inherits the compiler's own model.
    """
    k = cfg.mesh.pipeline * cfg.pipeline.repeats if cfg.mesh.pipeline > 1 else 1
    try:
        costs = [_cost(compile_train_step(_with_layers(cfg, n), devices)[1]) for n in (k, 2 * k)]
    except Exception as e:  # even the small probe does not fit: no estimates
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return None, None
    scale = cfg.model.num_layers / k - 1

    def extrapolate(key: str) -> float | None:
        one, two = (c.get(key) for c in costs)
        if not one or not two or one <= 0:
            return None
        return float(one + scale * (two - one))

    return extrapolate("flops"), extrapolate("optimal_seconds")


def kernel_work(cfg: Config, devices: int) -> float:
    """FLOPs per device per step of the attention kernels, which cost_analysis() does not
    count (the splash kernel supplies no estimate). Causal work only (the kernel skips the
    masked tiles, and outside a sliding window): per token and layer 4 H D per attended key
    forward, twice that backward, and the forward again when remat recomputes the block;
    split evenly over the devices."""
    m = cfg.model
    keys = causal_keys(m, cfg.data.seq_len)  # summed over the layers
    per_token = 2 * keys * m.num_heads * m.head_dim * (6 + (2 if m.remat != "none" else 0))
    return per_token * cfg.train.batch_size * cfg.data.seq_len / devices


def plan(cfg: Config, topology: Topology, hbm_bytes: float | None = None, estimate: bool = True) -> Plan:
    """Compile the train step of `cfg` for `topology` and report memory, FLOPs and speed.

    Memory comes from the real (scanned) step; FLOPs and the time estimate from the
    unrolled probes of `compiler_estimates`, skipped when `estimate` is false (the probes
    are most of a large model's planning time: minutes each for Llama 8B)."""
    if hbm_bytes is not None and not 0 < hbm_bytes < math.inf:  # before minutes of compiling, not after
        raise ConfigError(f"hbm_bytes={hbm_bytes} must be a positive, finite memory size per device")
    try:
        mesh, compiled = compile_train_step(cfg, topology.devices)
        mem = compiled.memory_analysis()
        text = compiled.as_text()
        kernels, moves = kernel_calls(text), collectives(text)
        argument_bytes, temp_bytes = int(mem.argument_size_in_bytes), int(mem.temp_size_in_bytes)
        host_bytes = int(getattr(mem, "host_temp_size_in_bytes", 0) or 0)
        out_bytes, refused = max(0, mem.output_size_in_bytes - mem.alias_size_in_bytes), None
    except Exception as e:  # the TPU compiler refuses a step that cannot fit in HBM
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        refused = str(e).strip().splitlines()[0]
        mesh, argument_bytes = _argument_bytes(cfg, topology.devices)
        temp_bytes, out_bytes, kernels, moves, host_bytes = _required_temporaries(refused), 0, 0, {}, 0
    flops, seconds = compiler_estimates(cfg, topology.devices) if estimate else (None, None)
    tokens = cfg.train.batch_size * cfg.data.seq_len
    per_token = flops_breakdown(cfg, cfg.data.seq_len)  # 6N by matrix (4N frozen), and attention (PaLM's count)
    # per token: the attention work PaLM's count has and the causal (and windowed) mask skips
    keys_skipped = attended_keys(cfg, cfg.data.seq_len) - causal_keys(cfg, cfg.data.seq_len)
    skipped = 12.0 * keys_skipped * cfg.model.num_heads * cfg.model.head_dim
    return Plan(
        topology=topology.name,
        device_kind=topology.device_kind,
        devices=len(topology.devices),
        mesh={k: int(v) for k, v in mesh.shape.items()},
        argument_bytes=argument_bytes,
        temp_bytes=temp_bytes,
        output_bytes=int(out_bytes),
        refused=refused,
        hbm_bytes=hbm_bytes if hbm_bytes is not None else topology.hbm_bytes,
        compiler_flops=flops,
        analytic_flops=sum(per_token.values()) * tokens,
        causal_attention_flops=skipped * tokens,
        estimated_seconds=seconds,
        peak_flops=topology.peak_flops,
        tokens_per_step=tokens,
        kernel_calls=kernels,
        kernel_seconds=kernel_work(cfg, len(topology.devices)) / topology.peak_flops
        if kernels and topology.peak_flops else None,
        collectives=moves,
        estimated=estimate,
        host_temp_bytes=host_bytes,
        slices=len(device_slices(topology.devices)),
    )
