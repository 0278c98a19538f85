"""The lm-evaluation-harness adapter, offline: local task YAMLs over local JSON files,
run through `jaxllm eval harness`, must give the numbers of jaxllm's own evaluators."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: no hub lookups
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxllm.cli import main  # noqa: E402
from jaxllm.data.tokenizer import ByteTokenizer  # noqa: E402
from jaxllm.evaluate import evaluate_mc, perplexity, read_mc  # noqa: E402
from jaxllm.generation import generate  # noqa: E402
from jaxllm.model.api import init_params  # noqa: E402
from jaxllm.train.load import write_run  # noqa: E402
from tests.test_evaluate import tiny_config  # noqa: E402

lm_eval = pytest.importorskip("lm_eval", reason="the [eval] extra (lm-eval) is part of the test install")

MC = [
    {"context": "The cat sat on the", "choices": ["mat", "moon rising", "a"], "label": 0},
    {"context": "One, two,", "choices": ["three", "seventeen"], "label": 1},
    {"context": "ROMEO:", "choices": ["But soft", "What light", "Hark", "Ay me"], "label": 2},
    {"context": "Question: 2+2=\nAnswer:", "choices": ["4", "five", "22"], "label": 0},
]
DOCS = [
    {"text": "Now is the winter of our discontent made glorious summer by this sun of York; " * 2},
    {"text": "naïve café, short."},
]

TASKS = {
    "jx_mc.yaml": """task: jx_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {mc}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "jx_ppl.yaml": """task: jx_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    cfg = tiny_config()
    params = init_params(cfg, jax.random.key(2))
    run_dir = write_run(cfg, params, root / "run")
    (root / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC))
    (root / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DOCS))
    tasks = root / "tasks"
    tasks.mkdir()
    for name, text in TASKS.items():
        (tasks / name).write_text(text.format(mc=root / "mc.jsonl", docs=root / "docs.jsonl"))
    return cfg, params, run_dir, root


def test_harness_tasks_equal_jaxllm_evaluators(setup, capsys):
    cfg, params, run_dir, root = setup
    out = root / "results"
    argv = ["eval", "harness", "--model", "jaxllm", "--model_args", f"path={run_dir}", "--batch_size", "8",
            "--tasks", "jx_mc,jx_ppl", "--include_path", str(root / "tasks"), "--output_path", str(out)]  # fmt: skip
    assert main(argv) == 0
    files = sorted(out.rglob("results*.json"))
    assert files, f"the harness wrote no results under {out}"
    results = json.loads(files[-1].read_text())["results"]

    mine = evaluate_mc(cfg, params, ByteTokenizer(), read_mc(root / "mc.jsonl"))
    assert results["jx_mc"]["acc,none"] == pytest.approx(mine.acc)
    assert results["jx_mc"]["acc_norm,none"] == pytest.approx(mine.acc_norm)

    ppl = perplexity(cfg, params, ByteTokenizer(), [d["text"] for d in DOCS])
    assert results["jx_ppl"]["bits_per_byte,none"] == pytest.approx(ppl.bits_per_byte, rel=1e-6)
    assert results["jx_ppl"]["byte_perplexity,none"] == pytest.approx(2**ppl.bits_per_byte, rel=1e-6)


def test_generate_until_is_greedy_generation_cut_at_the_stop(setup):
    from lm_eval.api.instance import Instance

    from jaxllm.evaluate.harness import JaxLLM

    cfg, params, run_dir, _ = setup
    lm = JaxLLM.create_from_arg_string(f"path={run_dir}", {"batch_size": 4, "device": "cpu"})
    tok = ByteTokenizer()
    prompts = ["ROMEO:", "Hello"]
    full = generate(cfg, params, [tok.encode(p).tolist() for p in prompts], 20, temperature=0.0,
                    stop_tokens=[tok.eos_id], vocab_limit=256)  # fmt: skip
    texts = [tok.decode(t) for t in full.tokens]
    stop = texts[0][3:5]  # a stop string that really occurs in the first reply
    requests = [
        Instance("generate_until", {}, (prompts[0], {"until": [stop], "max_gen_toks": 20}), 0),
        Instance("generate_until", {}, (prompts[1], {"until": ["\u2603"], "max_gen_toks": 20}), 1),
    ]
    got = lm.generate_until(requests)
    assert got[0] == texts[0][: texts[0].find(stop)]
    assert got[1] == texts[1]
