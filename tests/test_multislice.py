"""Multi-slice meshes: on libtpu's fake devices for two v5p-8 slices (2 x 4 chips, the
`slice_index` attribute set), `data` is the only mesh axis whose groups cross a slice
boundary; FSDP, context and tensor groups stay inside one slice. The plan compiles for
two slices, and the mesh picture numbers the devices by slice as the real mesh does."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.image import imread

import jaxllm
from jaxllm.cli import main
from jaxllm.config import ConfigError, MeshConfig
from jaxllm.parallel.mesh import AXES, make_mesh
from jaxllm.plan import get_topology
from jaxllm.viz.mesh import slice_of_devices

SMALL = ["model.vocab_size=256", "model.max_seq_len=64", "model.d_model=64", "model.num_layers=1",
         "model.num_heads=4", "model.dropout=0.0", "data.seq_len=64", "train.batch_size=16"]  # fmt: skip


@pytest.fixture(scope="module")
def two_slices():
    """8 fake TPU v5p devices: slice 0 and slice 1, 4 chips (a 2x2x1 torus) each."""
    devices = get_topology("v5p-8", slices=2).devices
    assert sorted(d.slice_index for d in devices) == [0] * 4 + [1] * 4
    return devices


def groups(mesh, axis: str) -> list[list]:
    """The device groups of one mesh axis: devices sharing every coordinate but that one."""
    grid = np.moveaxis(mesh.devices, AXES.index(axis), -1)
    return [list(g) for g in grid.reshape(-1, grid.shape[-1])]


@pytest.mark.parametrize("sizes", [dict(data=2, fsdp=2, tensor=2), dict(data=2, context=2, tensor=2),
                                   dict(data=-1, fsdp=2, context=2)])  # fmt: skip
def test_only_data_groups_cross_slices(two_slices, sizes):
    mesh = make_mesh(MeshConfig(**sizes), two_slices)
    assert len({d.id for d in mesh.devices.flat}) == 8 and mesh.shape["data"] == 2
    for axis in AXES:
        for group in groups(mesh, axis):
            spans = {d.slice_index for d in group}
            if axis == "data":
                assert spans == {0, 1}, (axis, group)  # one replica per slice: the all-reduce crosses DCN
            else:
                assert len(spans) == 1, (axis, group)  # gathers and activations stay on the slice's ICI
    # jaxllm viz mesh numbers devices row-major over the mesh; its slices are the real ones
    cfg = jaxllm.load_config("shakespeare-char", [f"mesh.{k}={v}" for k, v in sizes.items()] + ["mesh.slices=2"])
    assert slice_of_devices(cfg, 8) == [d.slice_index for d in mesh.devices.flat]


def test_a_mesh_that_cannot_span_the_slices_is_a_clear_error(two_slices):
    with pytest.raises(ConfigError, match=r"mesh.data=1 is not divisible by the 2 slices.*multiple of 2"):
        make_mesh(MeshConfig(data=1, fsdp=4, tensor=2), two_slices)
    with pytest.raises(ConfigError, match=r"mesh.slices=1 but the 8 devices span 2 slice\(s\).*mesh.slices=2"):
        make_mesh(MeshConfig(data=2, fsdp=4, slices=1), two_slices)
    with pytest.raises(ConfigError, match=r"do not split evenly into slices .*\{0: 4, 1: 2\}"):
        make_mesh(MeshConfig(data=-1), two_slices[:6])
    # explicit and inferred counts agree: the same mesh
    assert (make_mesh(MeshConfig(data=2, fsdp=4, slices=2), two_slices).devices ==
            make_mesh(MeshConfig(data=2, fsdp=4), two_slices).devices).all()  # fmt: skip
    # and at config load, before any device is seen (with data=-1, when the devices are)
    jaxllm.load_config("shakespeare-char", ["mesh.slices=2", "mesh.data=-1"])
    for bad, match in (("mesh.data=3", "mesh.data=3 is not divisible by mesh.slices=2; only data spans slices"),
                       ("mesh.slices=-1", "mesh.slices=-1 must be >= 0")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            jaxllm.load_config("shakespeare-char", ["mesh.slices=2", bad, "train.batch_size=12"])


def test_one_slice_is_unchanged():
    """Single-slice meshes are built as before: jax.make_mesh over one torus (libtpu's
    single-slice devices carry no slice_index: one slice, as CPU and GPU devices)."""
    import jax

    one = get_topology("v5p-8").devices
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), one)
    assert (mesh.devices == jax.make_mesh((1, 2, 1, 1, 2, 1), AXES, devices=one).devices).all()
    assert (make_mesh(MeshConfig(fsdp=2), jax.devices()[:8]).devices.flat == np.array(jax.devices()[:8])).all()


def test_plan_compiles_for_two_slices(capsys):
    """`jaxllm plan --slices 2`: the train step of a tiny model compiles for 2 x v5p-8 with
    data over the slices (memory only: no probes), and fits."""
    mesh = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "model.dtype=bfloat16"]
    code = main(["plan", "shakespeare-char", *SMALL, *mesh, "--topology", "v5p-8", "--slices", "2",
                 "--memory-only"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "v5p-8 (v5p:2x2x1 x 2 slices): 8 x TPU v5" in out
    assert "data 2 x fsdp 2 x context 1 x expert 1 x tensor 2 x pipeline 1 (data over 2 slices, DCN)" in out
    assert "fits  yes" in out and "all-reduce" in out
    code = main(["plan", "shakespeare-char", *SMALL, "mesh.data=1", "mesh.fsdp=8", "--topology", "v5p-8",
                 "--slices", "2", "--memory-only"])  # fmt: skip
    assert code == 2 and "mesh.data=1 is not divisible by the 2 slices" in capsys.readouterr().err


def test_viz_mesh_shows_the_slices(tmp_path, capsys):
    out = tmp_path / "mesh.png"
    args = ["viz", "mesh", "shakespeare-char", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "--devices", "8"]
    assert main([*args, "--out", str(tmp_path / "one.png")]) == 0
    one_slice = [line for line in capsys.readouterr().out.splitlines() if line.startswith("device ")]
    assert len(one_slice) == 8 and not any("slice" in line for line in one_slice)
    assert main([*args, "mesh.slices=2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("device ")]
    assert [line.rsplit(", slice ", 1)[1] for line in lines] == ["0"] * 4 + ["1"] * 4

    def has(image, colour) -> bool:
        return bool((np.abs(image[..., :3] - np.array(colour[:3])) < 2 / 255).all(axis=-1).any())

    slices, one = imread(out), imread(tmp_path / "one.png")
    pastel = colormaps["Pastel1"]  # the devices-by-slice panel: one colour per slice
    assert has(slices, pastel(0)) and has(slices, pastel(1)) and not has(one, pastel(0))
    # data not divisible by the slices: said at config load (data fixed) or by the picture (data=-1), not drawn
    for data in ("mesh.data=1", "mesh.data=-1"):
        code = main(["viz", "mesh", "shakespeare-char", data, "mesh.fsdp=8", "mesh.slices=2", "--devices", "8",
                     "--out", str(out)])  # fmt: skip
        assert code == 2 and "mesh.data=1 is not divisible by mesh.slices=2" in capsys.readouterr().err
