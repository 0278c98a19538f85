"""Corpus preparation: documents/s of the single-process `prepare` and the Beam pipeline (issue 26).

Runs, each in a fresh subprocess (so each peak-memory figure is that run's alone):
  - `jaxllm.data.prepare.prepare` (one process) and `jaxllm.data.pipeline.prepare_beam`
    (Beam's DirectRunner, `--beam-workers` worker processes, multi_processing);
  - on the complete works of Shakespeare (../shared/data/shakespeare/*.txt, one document
    per paragraph, data.documents=paragraph) and on synthetic corpora (benchmarks/
    synthetic_corpus.py: planted exact and near duplicates, hard negatives, junk) at the
    `--sizes` given;
  - with tokenizer.path=byte (no tokenizer training), data.split=document, val 5%.
For each run: wall time of the prepare call, documents/s and input MB/s, the peak RSS of
the main process (getrusage RUSAGE_SELF) and of its largest child (RUSAGE_CHILDREN, and the
VmHWM of every descendant polled from /proc, for workers that are never waited for); whether
both paths wrote the same shards (every shard's sha256 recomputed from the file and equal,
by name, to the other path's) and the same document counts; and, on synthetic corpora, the
near-dedup recall / precision against the planted truth (_dedup_score.evaluate_dedup).

    python benchmarks/prepare.py                              # quick: 20k and 100k documents
    python benchmarks/prepare.py --sizes 100000 1000000       # the issue's sizes (hours on 2 cores)

Writes its section of BENCHMARKS.md unless --no-write.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
MB = 1e6
BEAM_ARGS = ("--runner=DirectRunner", "--direct_num_workers={workers}", "--direct_running_mode=multi_processing")
COMMON = ("tokenizer.path=byte", "model.vocab_size=256", "data.split=document", "data.val_fraction=0.05")


def child(kind: str, overrides: list[str], beam_args: list[str], result: Path) -> None:
    """One measured run, in this (fresh) process: prepare, then write the figures to `result` as JSON."""
    import jaxllm
    from jaxllm.data.prepare import prepare

    cfg = jaxllm.load_config("shakespeare-char", overrides)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    start = time.perf_counter()
    if kind == "single":
        manifest = prepare(cfg, log=log)
    elif kind == "beam":
        from jaxllm.data.pipeline import prepare_beam

        manifest = prepare_beam(cfg, beam_args, log=log)
    else:  # the imports alone: what a run holds before it reads a byte
        import apache_beam  # noqa: F401

        manifest = None
    wall = time.perf_counter() - start
    usage = {who: resource.getrusage(w).ru_maxrss * 1024 for who, w in
             (("self", resource.RUSAGE_SELF), ("children", resource.RUSAGE_CHILDREN))}  # fmt: skip
    result.write_text(json.dumps({"wall_s": wall, "manifest": str(manifest) if manifest else None,
                                  "maxrss_self": usage["self"], "maxrss_children": usage["children"]}))  # fmt: skip


def _tree(root: int) -> list[int]:
    """`root`'s descendant process ids (from /proc), not `root` itself."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def measure(kind: str, overrides: list[str], args: argparse.Namespace, log_path: Path) -> dict[str, Any]:
    """Run `child` in a fresh process; its figures plus the descendants' peak RSS polled from /proc."""
    result = log_path.with_suffix(".json")
    result.unlink(missing_ok=True)
    beam_args = [a.format(workers=args.beam_workers) for a in BEAM_ARGS]
    cmd = [sys.executable, __file__, "--child", kind, "--result", str(result), "--beam-args", json.dumps(beam_args),
           "--overrides", json.dumps(overrides)]  # fmt: skip
    path = os.pathsep.join([str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}  # this tree's jaxllm, in Beam's workers too
    start, hwm, total = time.perf_counter(), {}, 0
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            kids = _tree(proc.pid)
            for pid in kids:
                hwm[pid] = max(hwm.get(pid, 0), _status_kb(pid, "VmHWM"))
            total = max(total, sum(_status_kb(p, "VmRSS") for p in [proc.pid, *kids]))
            time.sleep(0.5)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed (exit {proc.returncode}); its log: {log_path}\n"
                           + log_path.read_text()[-3000:])  # fmt: skip
    figures = json.loads(result.read_text())
    figures.update(process_s=time.perf_counter() - start, polled_workers=len(hwm),
                   worker_hwm=max(hwm.values(), default=0) * 1024, total_rss_sampled=total * 1024)  # fmt: skip
    figures["largest_child"] = max(figures["maxrss_children"], figures["worker_hwm"])
    if figures["manifest"]:
        manifest = json.loads(Path(figures["manifest"]).read_text())
        figures["documents"] = manifest["documents"]
        figures["input_bytes"] = sum(s["bytes"] for s in manifest["sources"])
        figures["splits"] = manifest["splits"]
    return figures


def shards_agree(a: dict, b: dict, dir_a: Path, dir_b: Path) -> tuple[bool, int, str]:
    """(same shard files byte for byte, shard count, why not): hashes recomputed from the files."""
    from jaxllm.data.shards import file_sha256

    listed = {}
    for name, figures, folder in (("single", a, dir_a), ("beam", b, dir_b)):
        entries = [(s, e["file"], e["sha256"], e["docs"], e["tokens"]) for s in ("train", "val")
                   for e in figures["splits"][s]["shards"]]  # fmt: skip
        for _, file, sha, _, _ in entries:
            if file_sha256(folder / file) != sha:
                return False, len(entries), f"{name}: {file} does not match its manifest's sha256"
        listed[name] = entries
    if listed["single"] != listed["beam"]:
        return False, len(listed["single"]), f"shard lists differ ({len(listed['single'])} vs {len(listed['beam'])})"
    return True, len(listed["single"]), ""


def corpora(args: argparse.Namespace) -> list[tuple[str, list[str], Path | None]]:
    """(name, data.* overrides naming the inputs, synthetic corpus folder or None), generating corpora as needed."""
    from synthetic_corpus import VERSION, load_truth

    out = [("Shakespeare, complete works (paragraphs)",
            [f"data.inputs=[{args.shared}/shakespeare/*.txt]", "data.documents=paragraph"], None)]  # fmt: skip
    for n in args.sizes:
        folder = args.workdir / f"corpus-{n}-s{args.seed}"
        try:
            _, meta = load_truth(folder)
            fresh = meta["version"] != VERSION or meta["n_docs"] != n or meta["files"] != args.files
            fresh = fresh or "peak_rss_bytes" not in meta  # written before the generator recorded it
        except (OSError, KeyError, ValueError):
            fresh = True
        if fresh:  # in a process of its own, so the peak RSS it records is the generator's
            print(f"generating {n:,} synthetic documents in {folder}", flush=True)
            subprocess.run([sys.executable, str(HERE / "synthetic_corpus.py"), str(folder), "--docs", str(n),
                            "--seed", str(args.seed), "--files", str(args.files),
                            "--vocab", str(args.shared / "tinyshakespeare.txt")], check=True)  # fmt: skip
            _, meta = load_truth(folder)
        args.generated.append(meta)
        out.append((f"synthetic {n:,}", [f"data.inputs=[{folder}/part-*.jsonl]"], folder))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[20_000, 100_000], help="synthetic corpus sizes")
    ap.add_argument("--paths", nargs="+", default=["single", "beam"], choices=["single", "beam"])
    ap.add_argument("--beam-workers", type=int, default=2)
    ap.add_argument("--shard-tokens", type=int, default=2_000_000, help="data.shard_tokens: several shards each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--files", type=int, default=16, help="JSONL files per synthetic corpus")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/jaxllm-bench-prepare"), help="corpora (kept) and runs")
    ap.add_argument("--no-shakespeare", action="store_true")
    ap.add_argument("--shared", type=Path, default=SHARED, help="the shared corpora folder (../shared/data)")
    ap.add_argument("--no-write", action="store_true", help="print, do not write BENCHMARKS.md")
    ap.add_argument("--child", choices=["single", "beam", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--beam-args", default="[]", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # benchmarks/ (sys.path[0]) holds pipeline.py, loader.py...: not for the libraries to find
        sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE]
        return child(args.child, json.loads(args.overrides), json.loads(args.beam_args), args.result)
    sys.path.insert(0, str(HERE))
    from _dedup_score import evaluate_dedup, index_corpus
    from _report import git_revision, write_section

    args.generated = []
    command = "python benchmarks/prepare.py" + "".join(f" {a}" for a in sys.argv[1:])
    args.workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    todo = corpora(args)[1 if args.no_shakespeare else 0 :]
    base = measure("baseline", list(COMMON), args, args.workdir / "baseline.log")
    print(f"baseline (imports, apache_beam included): peak RSS {base['maxrss_self'] / MB:,.0f} MB", flush=True)
    rows, scores, failed = [], [], []
    for name, inputs, folder in todo:
        runs: dict[str, dict] = {}
        for kind in args.paths:
            out = args.workdir / "out" / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}-{kind}"
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(out, ignore_errors=True)
            overrides = [*COMMON, *inputs, f"data.path={out}", f"data.shard_tokens={args.shard_tokens}"]
            print(f"{name}: {kind} ...", flush=True)
            try:
                runs[kind] = measure(kind, overrides, args, args.workdir / f"{out.name}.log") | {"out": out}
            except RuntimeError as e:  # one failed run must not lose the others' hours
                print(e, flush=True)
                failed.append(f"{name}, {kind}: failed, see {args.workdir / f'{out.name}.log'}")
                continue
            r = runs[kind]
            docs = r["documents"]["read"]
            print(f"  {docs:,} documents in {r['wall_s']:.1f} s: {docs / r['wall_s']:,.0f} documents/s, "
                  f"{r['input_bytes'] / MB / r['wall_s']:.2f} MB/s; peak RSS main {r['maxrss_self'] / MB:,.0f} MB, "
                  f"largest child {r['largest_child'] / MB:,.0f} MB", flush=True)  # fmt: skip
        same = None
        if len(runs) == 2:
            ok, count, why = shards_agree(runs["single"], runs["beam"], runs["single"]["out"], runs["beam"]["out"])
            counts = runs["single"]["documents"] == runs["beam"]["documents"]
            same = {"shards": ok, "count": count, "why": why, "documents": counts}
            print(f"  identical shards: {ok} ({count} shards) {why}; identical document counts: {counts}", flush=True)
        for kind, r in runs.items():
            rows.append((name, kind, r, same))
        if folder is not None:
            index = index_corpus(folder)
            for kind, r in runs.items():
                score = evaluate_dedup(folder, r["out"], index)
                scores.append((name, kind, score))
                print(f"  {kind}: near recall {score['near_recall']}, precision {score['near_precision']}, "
                      f"hard negatives kept {score['hard_negatives_kept']}, exact removed {score['exact_removed']}, "
                      f"agrees with manifest {score['agrees_with_manifest']}", flush=True)  # fmt: skip
            if len(runs) == 2:
                same["kept"] = scores[-1][2]["kept_sha256"] == scores[-2][2]["kept_sha256"]
        for r in runs.values():
            shutil.rmtree(r["out"], ignore_errors=True)  # 1M documents: ~2 GB per dataset
    body = report(command, args, base, rows, scores, load_before, git_revision())
    body += "".join(f"\n{line}\n" for line in failed)
    print(body)
    if not args.no_write:
        write_section("prepare", body)


def unaccounted(run: dict) -> int:
    """Documents read that are neither in the shards nor counted as removed by any stage (0 unless some are
    lost). With data.split=document each kept document lies in exactly one split."""
    docs = run["documents"]
    removed = sum(v for k, v in docs["filtered"].items() if k != "kept") + sum(docs["duplicates_removed"].values())
    return docs["read"] - removed - run["splits"]["train"]["docs"] - run["splits"]["val"]["docs"]


def growth(rows: list) -> str:
    """Peak RSS at the smallest and the largest synthetic size, per path: what grows with the corpus."""
    lines = []
    for kind in ("single", "beam"):
        runs = [(r["documents"]["read"], r) for name, k, r, _ in rows if k == kind and name.startswith("synthetic")]
        if len(runs) >= 2:
            (n0, a), (n1, b) = min(runs, key=lambda x: x[0]), max(runs, key=lambda x: x[0])
            what = [("main", "maxrss_self")] + ([("largest child", "largest_child")] if kind == "beam" else [])
            lines.append(f"- {kind}, {n0:,} -> {n1:,} documents (x{n1 / n0:.0f}): " + "; ".join(
                f"{w} {a[key] / MB:,.0f} -> {b[key] / MB:,.0f} MB (x{b[key] / a[key]:.1f})" for w, key in what))
    return "\n".join(lines) or "- (one synthetic size only)"


def yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def report(command: str, args: argparse.Namespace, base: dict, rows: list, scores: list, load_before: tuple,
           revision: str) -> str:  # fmt: skip
    """The BENCHMARKS.md section: the speed and memory table, then the dedup scores."""
    table = ["| corpus | documents | input MB | path | wall s | documents/s | input MB/s | peak RSS main MB "
             "| largest child MB | all processes MB (sampled) | unaccounted documents | same shards, counts, kept |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, kind, r, same in rows:
        docs, wall = r["documents"]["read"], r["wall_s"]
        agree = "-"
        if same is not None:
            kept = "-" if "kept" not in same else "yes" if same["kept"] else "NO"
            agree = f"{'yes' if same['shards'] else 'NO'} ({same['count']} shards), {yes(same['documents'])}, {kept}"
        table.append(f"| {name} | {docs:,} | {r['input_bytes'] / MB:,.1f} | {kind} | {wall:,.1f} | {docs / wall:,.0f} "
                     f"| {r['input_bytes'] / MB / wall:.2f} | {r['maxrss_self'] / MB:,.0f} | "
                     f"{r['largest_child'] / MB:,.0f} | {r['total_rss_sampled'] / MB:,.0f} | {unaccounted(r):,} | "
                     f"{agree} |")  # fmt: skip
    dedup = ["| corpus | path | exact dups removed | near recall | recall by true Jaccard 0.80-0.85 / 0.85-0.90 / "
             "0.90-0.95 / 0.95-1 | near precision | hard negatives kept | base documents kept | junk filtered | "
             "agrees with manifest |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, kind, s in scores:
        bins = " / ".join(f"{hit:,}/{n:,}" for hit, n, _ in s["near_recall_by_jaccard"].values())
        pair = lambda p: f"{p[0]:,}/{p[1]:,}"  # noqa: E731
        dedup.append(f"| {name} | {kind} | {pair(s['exact_removed'])} | {s['near_recall']} "
                     f"({pair(s['near_removed'])}) | {bins} | {s['near_precision']} "
                     f"({s['near_false_positives'][0]:,} false) | {pair(s['hard_negatives_kept'])} | "
                     f"{pair(s['base_kept'])} | {pair(s['junk_removed_by_its_filter'])} | "
                     f"{'yes' if s['agrees_with_manifest'] else 'NO'} |")  # fmt: skip
    beam = " ".join(a.format(workers=args.beam_workers) for a in BEAM_ARGS)
    made = "; ".join(f"{m['n_docs']:,} documents, {m['bytes'] / MB:,.0f} MB, written in {m['seconds']:,.1f} s "
                     f"({m['n_docs'] / m['seconds']:,.0f} documents/s, "
                     f"peak RSS {m['peak_rss_bytes'] / MB:,.0f} MB), "
                     f"planted {', '.join(f'{k} {v:,}' for k, v in m['counts'].items())}"
                     for m in args.generated)  # fmt: skip
    return f"""## Corpus preparation: single process vs the Beam pipeline (`{command}`)

Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other work (load average
{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: timings are noisy), Python
{platform.python_version()}, git {revision}. Each run is a fresh subprocess of this script; "wall" is the
prepare call alone (imports excluded). Single: `jaxllm.data.prepare.prepare`; beam:
`jaxllm.data.pipeline.prepare_beam(cfg, [{beam}])`. Settings: `{" ".join(COMMON)}
data.shard_tokens={args.shard_tokens}` and the defaults (filters, exact dedup, MinHash 128 x 16 bands,
threshold 0.8, 5-word shingles). Peak RSS: getrusage ru_maxrss of the main process; "largest child" the
larger of RUSAGE_CHILDREN and the VmHWM of every descendant polled from /proc every 0.5 s; "all processes"
the largest sum of VmRSS over the process tree at one poll. The imports alone (jaxllm, apache_beam) hold
{base["maxrss_self"] / MB:,.0f} MB. "Same shards": every shard's sha256 recomputed from its file, equal by
name between the paths; "counts": the manifests' `documents` (read, filtered, duplicates, examples)
equal; "kept": the same corpus documents in the shards.

{chr(10).join(table)}

Peak RSS against corpus size:

{growth(rows)}

Synthetic corpora (`python benchmarks/synthetic_corpus.py DIR --docs N --seed {args.seed} --files {args.files}`, one
process): {made or "none"}.

Dedup against the planted truth (benchmarks/synthetic_corpus.py; scored by benchmarks/_dedup_score.py):
recall = planted near duplicates removed / planted (per bin of their true Jaccard with the original);
precision = of the documents near dedup removed (absent from the shards, neither filtered nor exact
duplicates by a recomputation in input order), the share that are planted near duplicates or have a
true Jaccard >= 0.8 with a kept earlier document of their family ("false": the rest). Base documents
and hard negatives (true Jaccard 0.3-0.6 with their original) must all be kept. "Agrees with manifest":
the recomputed filtered / exact / near counts equal the manifest's. A document missing from the shards
for no reason counts as removed by near dedup here, so a lost document shows as a false positive.

{chr(10).join(dedup)}
"""


if __name__ == "__main__":
    main()
