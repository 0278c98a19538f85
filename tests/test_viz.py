"""jaxllm's own pictures: attention maps, token boundaries, mesh shards (tiny model, real PNGs)."""

from __future__ import annotations

import shutil

import jax
import matplotlib.image as mpimg
import numpy as np
import pytest

from jaxllm import init_params, load_config
from jaxllm.cli import main
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.model.api import param_logical_axes, param_shapes
from jaxllm.parallel.mesh import make_mesh
from jaxllm.parallel.rules import named_shardings, parse_rules
from jaxllm.train.load import write_run
from jaxllm.viz._figure import token_pieces
from jaxllm.viz.attention import attention_maps
from jaxllm.viz.mesh import shard_layout

OVERRIDES = ["model.vocab_size=256", "model.max_seq_len=32", "model.d_model=32", "model.num_layers=2",
             "model.num_heads=4", "model.dropout=0.0", "model.init_std=0.2", "data.seq_len=32",
             "tokenizer.path=byte"]  # fmt: skip


def png(path) -> np.ndarray:
    """The image as an array, after checking it is a real, non-blank PNG."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert float(image[..., :3].std()) > 0.05, "the image is (nearly) blank"
    return image


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = load_config("shakespeare-char-cpu", OVERRIDES)
    params = init_params(cfg, jax.random.key(1))
    return cfg, params, write_run(cfg, params, tmp_path_factory.mktemp("viz") / "run")


@pytest.mark.parametrize("extra", [[], ["model.position=rope", "model.num_kv_heads=2", "model.norm=rmsnorm"]])
def test_attention_maps_are_causal_distributions(extra):
    cfg = load_config("shakespeare-char-cpu", OVERRIDES + extra)
    params = init_params(cfg, jax.random.key(2))
    ids = [84, 111, 32, 98, 101, 44, 32, 111, 114]
    maps = attention_maps(cfg, params, ids)
    assert maps.shape == (2, 4, len(ids), len(ids))
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(maps, k=1) == 0)  # no query sees a later key
    assert maps[:, :, -1].std() > 1e-3  # not uniform: the weights shape it
    # Causality end to end: a prefix's maps are the top-left block of the whole prompt's.
    np.testing.assert_allclose(attention_maps(cfg, params, ids[:5]), maps[:, :, :5, :5], rtol=1e-5, atol=1e-6)


def test_attention_maps_reject_bad_prompts(run):
    cfg, params, _ = run
    with pytest.raises(ValueError, match="no tokens"):
        attention_maps(cfg, params, [])
    with pytest.raises(ValueError, match="max_seq_len=32"):
        attention_maps(cfg, params, [1] * 33)


def test_viz_attention_writes_the_grid(run, tmp_path, capsys):
    _, _, run_dir = run
    out = tmp_path / "att.png"
    main(["viz", "attention", str(run_dir), "--prompt", "To be, or not", "--out", str(out)])
    assert "wrote" in capsys.readouterr().out
    image = png(out)
    assert image.shape[1] > 1000 and image.shape[0] > 500  # 2 rows x 4 columns of labelled maps
    one = tmp_path / "one.png"
    main(["viz", "attention", str(run_dir), "--prompt", "To be, or not", "--layer", "1", "--head", "2",
          "--out", str(one)])  # fmt: skip
    assert png(one).shape[1] < image.shape[1] / 2  # one map, not eight
    assert main(["viz", "attention", str(run_dir), "--prompt", "To be", "--head", "9", "--out", str(one)]) == 2
    assert "head 9 does not exist: the model has 4 heads (0..3)" in capsys.readouterr().err
    assert main(["viz", "attention", str(run_dir), "--prompt", "", "--out", str(one)]) == 2
    assert "give a non-empty --prompt" in capsys.readouterr().err


def test_viz_attention_across_checkpoints(run, tmp_path, capsys):
    cfg, _, _ = run
    run_dir = write_run(cfg, init_params(cfg, jax.random.key(3)), tmp_path / "run", step=0)
    later = write_run(cfg, init_params(cfg, jax.random.key(4)), tmp_path / "later", step=7)
    shutil.copytree(later / "checkpoints" / "7", run_dir / "checkpoints" / "7")
    out = tmp_path / "steps.png"
    main(["viz", "attention", str(run_dir), "--prompt", "To be", "--across-checkpoints", "--out", str(out)])
    assert "(steps [0, 7])" in capsys.readouterr().out
    image = png(out)
    assert image.shape[1] > 1.5 * image.shape[0]  # two maps side by side


def test_many_checkpoints_wrap_into_rows(tmp_path):
    from jaxllm.viz.attention import ACROSS_COLUMNS, plot_attention_across_steps

    maps = {step: np.tril(np.full((1, 1, 5, 5), 0.2)) for step in range(0, 600, 100)}  # 6 checkpoints
    image = png(plot_attention_across_steps(maps, list("To be"), 0, 0, tmp_path / "six.png"))
    one_row = (3.4 * 6 + 1) / 3.4  # the aspect ratio six maps in one strip would have
    assert ACROSS_COLUMNS == 4 and image.shape[1] / image.shape[0] < one_row / 2  # two rows of at most four


def test_token_pieces_rebuild_the_text():
    tok = load_tokenizer("byte")
    text = "Now is the winter of our discontent — made glorious"
    pieces = token_pieces(tok, [int(i) for i in tok.encode(text)])
    assert "".join(pieces) == text


def test_viz_tokens(tmp_path, capsys):
    out = tmp_path / "tokens.png"
    main(["viz", "tokens", "--tokenizer", "byte", "--text", "To be, or not to be:\nthat is the question.",
          "--out", str(out)])  # fmt: skip
    assert "wrote" in capsys.readouterr().out
    image = png(out)
    assert image.shape[1] > 500 and image.shape[0] > 100
    assert main(["viz", "tokens", "--tokenizer", "byte", "--file", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt: no such file" in capsys.readouterr().err


def test_shard_layout_matches_jax_shardings():
    """Our picture's device -> shard map is the one jax places: compared on 8 CPU devices."""
    cfg = load_config("shakespeare-char-cpu", OVERRIDES + ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    mesh = make_mesh(cfg.mesh, jax.devices()[:8])
    shardings = named_shardings(param_logical_axes(cfg), mesh, parse_rules(cfg.mesh.rules))
    for path in ("blocks.mlp.up_proj.kernel", "blocks.attn.o_proj.kernel", "wte.embedding", "ln_f.scale"):
        lay = shard_layout(cfg, path, 8)
        leaf_sharding, leaf_shape = shardings, param_shapes(cfg)
        for key in path.split("."):
            leaf_sharding, leaf_shape = leaf_sharding[key], leaf_shape[key]
        where = leaf_sharding.devices_indices_map(tuple(leaf_shape.shape))
        devices = list(mesh.devices.flat)  # row-major over the mesh axes: our device numbers
        for index, holders in lay["holders"].items():
            for n in holders:
                slices = where[devices[n]]
                for dim, (i, sl) in enumerate(zip(index, slices, strict=True)):
                    size = leaf_shape.shape[dim]
                    shards = size // ((sl.stop or size) - (sl.start or 0))
                    assert (sl.start or 0) == i * size // shards, (path, n, dim)


def test_viz_mesh(tmp_path, capsys):
    out = tmp_path / "mesh.png"
    mesh = ["mesh.fsdp=2", "mesh.tensor=2", "mesh.pipeline=2", "mesh.data=1", "train.microbatches=2"]
    main(["viz", "mesh", "shakespeare-char-cpu", *mesh, "--param", "blocks.mlp.up_proj.kernel", "--devices", "8",
          "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert "device 7: data 0, fsdp 1, context 0, expert 0, tensor 1, pipeline 1" in text
    image = png(out)
    assert image.shape[1] > 2 * image.shape[0] * 0.8  # two pipeline panels side by side
    assert main(["viz", "mesh", "shakespeare-char-cpu", "--devices", "0", "--out", str(out)]) == 2
    assert "--devices 0: the mesh needs at least 1 device" in capsys.readouterr().err
    code = main(["viz", "mesh", "shakespeare-char-cpu", "--param", "blocks.mlp.nope", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and "'blocks.mlp.nope' is not a parameter" in err and "blocks.mlp.up_proj.kernel" in err


def test_viz_mesh_sequence_draws_the_context_split(tmp_path, capsys):
    from jaxllm.viz.sequence import causal_work, owners

    out = tmp_path / "sequence.png"
    main(["viz", "mesh", "shakespeare-char-cpu", "mesh.data=2", "mesh.context=4", "--sequence", "--devices", "8",
          "--out", str(out)])  # fmt: skip
    assert png(out).shape[1] > png(out).shape[0]  # contiguous and balanced side by side
    assert owners(16, 4, balanced=True).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 2, 2, 1, 1, 0, 0]
    contiguous, balanced = causal_work(64, 4, False), causal_work(64, 4, True)
    assert contiguous.sum() == balanced.sum() == 64 * 65 // 2
    assert contiguous.max() / contiguous.min() > 6 and balanced.max() == balanced.min()
    assert main(["viz", "mesh", "shakespeare-char-cpu", "--sequence", "--out", str(out)]) == 2
    assert "mesh.context=1: --sequence draws a sequence split over context devices" in capsys.readouterr().err
