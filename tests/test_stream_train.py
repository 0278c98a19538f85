"""Training on a streaming mixture: the trainer saves the stream's state with every checkpoint,
and a run stopped and resumed sees exactly the batches, so the losses, of one that never stopped."""

from __future__ import annotations

import json

import jaxllm
from jaxllm.data.prepare import prepare
from jaxllm.data.ready import ensure_data
from jaxllm.train.metrics import read_metrics
from jaxllm.train.trainer import train
from tests.fixtures import QUIET, TINY_MODEL, TINY_TRAIN


def _config(dataset, out, steps: int):
    mixture = [{"path": str(dataset / "data"), "weight": 3.0}, {"path": str(dataset / "text.jsonl"), "weight": 1.0}]
    return jaxllm.load_config("shakespeare-char", [
        *TINY_MODEL, *TINY_TRAIN, f"data.mixture={json.dumps(mixture)}", "data.inputs=[]",
        f"data.path={out}-no-dataset", f"train.out_dir={out}", f"train.steps={steps}", "train.checkpoint_every=2",
        "data.stream_shards=2"])  # fmt: skip


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if "loss" in r}


def test_a_stopped_mixture_run_resumes_with_the_same_batches(tiny_dataset, tmp_path):
    text = (tiny_dataset / "text.txt").read_text()
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    prepare(jaxllm.load_config("shakespeare-char", [f"data.inputs=[{tmp_path / 'text.jsonl'}]", "data.val_fraction=0",
                                                     f"data.path={tmp_path / 'data'}"]), **QUIET)  # fmt: skip
    whole = _config(tmp_path, tmp_path / "whole", steps=4)
    lines: list[str] = []
    ensure_data(whole, log=lines.append)  # nothing to prepare: `jaxllm train` goes on with the mixture alone
    assert any("training on data.mixture alone" in line for line in lines)
    train(whole, **QUIET)
    train(_config(tmp_path, tmp_path / "split", steps=2), **QUIET)
    train(_config(tmp_path, tmp_path / "split", steps=4), **QUIET)  # resumes at step 2
    a, b = _losses(tmp_path / "whole"), _losses(tmp_path / "split")
    assert sorted(a) == [1, 2, 3, 4] and a == b
    saved = json.loads((tmp_path / "split" / "checkpoints" / "4" / "data" / "metadata").read_text())
    assert len(saved["shards"]) == 2  # both reader shards' states, with both components' positions
