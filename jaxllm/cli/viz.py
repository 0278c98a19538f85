"""`jaxllm plot` and `jaxllm viz attention | routing | tokens | mesh | layers`: PNG pictures of
a run's curves, its attention maps, its experts' routing, a tokenization, how a parameter is
sharded over a mesh, and what each layer's attention may read (sliding windows)."""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxllm.cli.args import TOKENIZER_HELP, config_args, non_negative, positive
from jaxllm.config import load_config
from jaxllm.errors import ConfigError


def _plot(args: argparse.Namespace) -> None:
    from jaxllm.viz.curves import plot_run  # slow import (matplotlib)

    print(f"wrote {plot_run(args.run_dir, args.out)}")


def _viz_attention(args: argparse.Namespace) -> None:
    from jaxllm.train.checkpoint import Checkpointer  # slow import (orbax)
    from jaxllm.train.load import load_run, load_run_tokenizer  # slow import (jax, orbax)
    from jaxllm.viz._figure import token_pieces  # slow import (matplotlib)
    from jaxllm.viz.attention import (  # slow import (jax, matplotlib)
        attention_maps,
        check_indices,
        plot_attention,
        plot_attention_across_steps,
    )

    cfg, params, step = load_run(args.run_dir)
    check_indices(cfg.model.num_layers, cfg.model.num_heads, args.layer, args.head)
    tokenizer = load_run_tokenizer(cfg)
    ids = [int(i) for i in tokenizer.encode(args.prompt)]
    pieces = token_pieces(tokenizer, ids)
    out = args.out or str(Path(args.run_dir) / ("attention_steps.png" if args.across_checkpoints else "attention.png"))
    if args.across_checkpoints:
        layer, head = (args.layer or [0])[0], (args.head or [0])[0]
        steps = Checkpointer(Path(args.run_dir) / "checkpoints").steps()
        # The newest checkpoint is already loaded; restore only the others.
        maps = {s: attention_maps(cfg, params if s == step else load_run(args.run_dir, step=s)[1], ids) for s in steps}
        print(f"wrote {plot_attention_across_steps(maps, pieces, layer, head, out)} (steps {steps})")
        return
    maps = attention_maps(cfg, params, ids)
    title = f"{Path(args.run_dir).name} at step {step}: {len(ids)} tokens"
    print(f"wrote {plot_attention(maps, pieces, out, args.layer, args.head, title)}")


def _viz_routing(args: argparse.Namespace) -> None:
    from jaxllm.train.load import load_run, load_run_tokenizer  # slow import (jax, orbax)
    from jaxllm.viz._figure import token_pieces  # slow import (matplotlib)
    from jaxllm.viz.routing import expert_load, plot_routing, routing  # slow import (jax, matplotlib)

    cfg, params, step = load_run(args.run_dir)
    tokenizer = load_run_tokenizer(cfg)
    ids = [int(i) for i in tokenizer.encode(args.prompt)]
    experts, weights = routing(cfg, params, ids)
    out = args.out or str(Path(args.run_dir) / "routing.png")
    title = f"{Path(args.run_dir).name} at step {step}"
    print(f"wrote {plot_routing(cfg, experts, weights, token_pieces(tokenizer, ids), out, title)}")
    for layer, load in enumerate(expert_load(experts, cfg.model.num_experts)):
        print(f"layer {layer}: share per expert " + " ".join(f"{x:.2f}" for x in load))


def _viz_tokens(args: argparse.Namespace) -> None:
    from jaxllm.data.tokenizer import load_tokenizer  # slow import (the data layer)
    from jaxllm.posttrain.data import read_utf8  # slow import (the posttrain layer)
    from jaxllm.viz.tokens import plot_tokens  # slow import (matplotlib)

    text = args.text if args.text is not None else read_utf8(args.file, "--file")[: args.max_chars]
    print(f"wrote {plot_tokens(load_tokenizer(args.tokenizer), text, args.out, args.width, Path(args.tokenizer).name)}")


def _viz_mesh(args: argparse.Namespace) -> None:
    from jaxllm.viz.mesh import device_table, parameter_names, plot_mesh  # slow import (jax, matplotlib)

    if args.devices < 1:
        raise ConfigError(f"--devices {args.devices}: the mesh needs at least 1 device; give e.g. --devices 8")
    cfg = load_config(args.config, args.overrides)
    if args.sequence:
        from jaxllm.viz.sequence import plot_sequence  # slow import (jax, matplotlib)

        print(f"wrote {plot_sequence(cfg, args.devices, args.out)}")
        print("\n".join(device_table(cfg, args.devices)))
        return
    if args.param not in parameter_names(cfg):
        raise ConfigError(f"--param {args.param!r} is not a parameter of this model; choose one of: "
                          f"{', '.join(parameter_names(cfg))}")  # fmt: skip
    print(f"wrote {plot_mesh(cfg, args.param, args.devices, args.out)}")
    print("\n".join(device_table(cfg, args.devices)))


def _viz_layers(args: argparse.Namespace) -> None:
    from jaxllm.viz.layers import plot_layers, receptive_fields  # slow import (jax, matplotlib)

    cfg = load_config(args.config, args.overrides)
    print(f"wrote {plot_layers(cfg.model, args.out, args.length)}")
    fields = receptive_fields(cfg.model, args.length)
    print(f"tokens the last of {args.length} depends on, after each layer: {[int(r.sum()) for r in fields]}")


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `plot` and `viz attention | tokens | mesh` to the `jaxllm` verbs."""
    plot = verbs.add_parser("plot", help="PNG of a run's train/val loss and throughput")
    plot.add_argument("run_dir")
    plot.add_argument("--out", default=None, help="output PNG (default RUN_DIR/metrics.png)")
    plot.set_defaults(func=_plot)

    viz = verbs.add_parser("viz", help="pictures: attention maps, tokenization, mesh shards").add_subparsers(
        dest="what", required=True
    )
    va = viz.add_parser("attention", help="attention maps of a prompt, per layer and head (PNG)")
    va.add_argument("run_dir")
    va.add_argument("--prompt", required=True)
    va.add_argument("--layer", action=non_negative(), nargs="+", default=None, help="layers to draw (default: all)")
    va.add_argument("--head", action=non_negative(), nargs="+", default=None, help="heads to draw (default: all)")
    va.add_argument("--across-checkpoints", action="store_true",
                    help="one head (first --layer/--head, default 0/0) at every saved checkpoint")  # fmt: skip
    va.add_argument("--out", default=None, help="output PNG (default RUN_DIR/attention.png)")
    va.set_defaults(func=_viz_attention)
    vr = viz.add_parser("routing", help="which experts a mixture-of-experts run sends each token to (PNG)")
    vr.add_argument("run_dir")
    vr.add_argument("--prompt", required=True)
    vr.add_argument("--out", default=None, help="output PNG (default RUN_DIR/routing.png)")
    vr.set_defaults(func=_viz_routing)
    vt = viz.add_parser("tokens", help="a text with its token boundaries coloured (PNG)")
    vt.add_argument("--tokenizer", required=True, help=TOKENIZER_HELP)
    source = vt.add_mutually_exclusive_group(required=True)
    source.add_argument("--text")
    source.add_argument("--file")
    vt.add_argument("--max-chars", action=positive(), default=400, help="with --file: its first N characters")
    vt.add_argument("--width", action=positive(), default=60, help="characters per line")
    vt.add_argument("--out", default="tokens.png")
    vt.set_defaults(func=_viz_tokens)
    vm = viz.add_parser("mesh", help="which device holds which shard of a parameter (PNG)")
    config_args(vm)
    vm.add_argument("--param", default="blocks.mlp.up_proj.kernel", help="dotted parameter name")
    vm.add_argument("--devices", type=int, default=8, help="device count the mesh spans")
    vm.add_argument("--sequence", action="store_true",
                    help="instead of a parameter: a sequence's causal attention over the context devices")
    vm.add_argument("--out", default="mesh.png")
    vm.set_defaults(func=_viz_mesh)
    vl = viz.add_parser("layers", help="each layer's attention mask (sliding window or global) and reach (PNG)")
    config_args(vl)
    vl.add_argument("--length", action=positive(), default=48, help="sequence length drawn")
    vl.add_argument("--out", default="layers.png")
    vl.set_defaults(func=_viz_layers)
