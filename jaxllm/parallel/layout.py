"""The run's layout: where every array lives on the mesh, decided once per run.

A run's shardings follow from three things: the mesh, the rules table (`mesh.rules` applied
to the defaults, jaxllm/parallel/rules.py) and the logical names the model puts on its
parameters. Deriving them costs a rules parse and an abstract init of the model and its
optimizer state (`jax.eval_shape`), and every consumer must see the same answer. So a run
builds one `Layout` at its start (`Layout.build`) and passes it down: to the state's init
and restore, the train and eval steps, the host loop's batches, post-training's frozen
models and generation. Nothing below the entry point derives a sharding from the config
again; a model other than the run's own (PPO's critic, a reward model) gets its shardings
from `Layout.for_model`, on the same mesh and the same parsed rules.

Layout holds:
  mesh          the device mesh
  rules         the parsed rules table; `flax_rules` the same in flax's form
  params        a NamedSharding per parameter of the run's model
  state         a NamedSharding per leaf of the train state {step, params, opt_state, rng}
                (None when built without an optimizer: a reader needs no moments)
  batch         the batch sharding: rows over the data-parallel axes (data x fsdp x expert)
  activations() the context that maps the model's activation constraints to mesh axes
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxllm.config import Config, ModelConfig
from jaxllm.model.api import boxed_init_fn
from jaxllm.parallel.mesh import BATCH_AXES
from jaxllm.parallel.rules import Rules, check_divisible, flax_rules, named_shardings, parse_rules


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


@dataclasses.dataclass(frozen=True, eq=False)
class Layout:
    """Every sharding of one run, built once (`Layout.build`) and passed down."""

    mesh: Mesh
    rules: Rules
    model: ModelConfig
    params: Any  # NamedSharding per parameter of `model`
    state: Any | None  # NamedSharding per train-state leaf; None without an optimizer
    param_shapes: Any  # ShapeDtypeStruct per parameter (unsharded), from the same abstract init

    @classmethod
    def build(cls, cfg: Config, mesh: Mesh, tx: optax.GradientTransformation | None = None) -> Layout:
        """The run's layout: parse `cfg.mesh.rules`, name every state leaf, check the mesh
        divides each sharded dimension. Called once per run by its entry point; a test
        counts the calls (tests/test_train.py)."""
        return cls._derive(mesh, parse_rules(cfg.mesh.rules), cfg.model, tx)

    @classmethod
    def _derive(cls, mesh: Mesh, rules: Rules, model: ModelConfig, tx: optax.GradientTransformation | None) -> Layout:
        boxed = jax.eval_shape(boxed_init_fn(model), jax.random.key(0))
        params = named_shardings(nn.get_partition_spec(boxed), mesh, rules)
        shapes = nn.meta.unbox(boxed)
        check_divisible(shapes, params)  # names the parameter and the fix before anything compiles
        state = None
        if tx is not None:
            opt_boxed = jax.eval_shape(tx.init, boxed)  # optax maps over the boxes: moments inherit the names
            replicated = NamedSharding(mesh, PartitionSpec())
            state = {"step": replicated, "params": params,
                     "opt_state": named_shardings(nn.get_partition_spec(opt_boxed), mesh, rules),
                     "rng": replicated}  # fmt: skip
        return cls(mesh, rules, model, params, state, shapes)

    def for_model(self, model: ModelConfig, tx: optax.GradientTransformation | None = None) -> Layout:
        """Another model's layout on this run's mesh and rules (PPO's critic, a reward model,
        a start run with another head): its own parameter names, no second rules parse."""
        if model == self.model and tx is None:
            return dataclasses.replace(self, state=None)
        return self._derive(self.mesh, self.rules, model, tx)

    @property
    def flax_rules(self) -> tuple:
        """The rules table in the form flax's `logical_axis_rules` takes."""
        return flax_rules(self.rules)

    @property
    def batch(self) -> NamedSharding:
        """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
        return NamedSharding(self.mesh, PartitionSpec(BATCH_AXES))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def data_parallel(self) -> int:
        """Devices a batch's rows are split over (data x fsdp x expert): batch sizes are multiples of it."""
        return math.prod(self.mesh.shape[a] for a in BATCH_AXES)

    @contextlib.contextmanager
    def activations(self) -> Iterator[None]:
        """Inside a traced function: the model's logical activation constraints
        (`nn.with_logical_constraint`) resolve to this mesh's axes by these rules."""
        with nn.logical_axis_rules(self.flax_rules):
            yield

    def put(self, tree: Any, shardings: Any = None) -> Any:
        """Host arrays that every process holds alike (a global batch built the same way in
        each, the same weights) as global arrays, each device taking its slice; `shardings`
        defaults to the batch sharding for every leaf. Works unchanged on one process or many."""
        if shardings is None:
            shardings = jax.tree.map(lambda _: self.batch, tree)

        def place(x: Any, sharding: NamedSharding) -> jax.Array:
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

        return jax.tree.map(place, tree, shardings)


__all__ = ["Layout"]
