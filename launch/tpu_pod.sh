#!/usr/bin/env bash
# Train jaxllm on a Cloud TPU VM slice: create (or reuse) it, install jaxllm on every
# worker, start the run on all workers at once, stream worker 0's log.
#
# usage: launch/tpu_pod.sh --name NAME --zone ZONE [--type v5p-128] [--version RUNTIME]
#                          [--project P] [--repo URL --ref REF] [--create] [--dry-run] -- CONFIG [overrides...]
#   e.g. launch/tpu_pod.sh --name llama --zone us-east5-a --type v5p-128 --create -- \
#          llama-8b mesh.fsdp=-1 mesh.data=1 train.out_dir=gs://my-bucket/runs/llama-8b
#
# jaxllm comes from this checkout (its committed HEAD, copied to every worker), or from
# --repo URL at --ref. Every worker runs the same `jaxllm train`; on a pod slice JAX finds the coordinator,
# the process count and each worker's rank itself (jaxllm/parallel/distributed.py), so
# no addresses are passed. Write train.out_dir to a bucket (or a shared disk) every
# worker can reach: checkpoints are written collectively. --dry-run prints the gcloud
# commands instead of running them. Mesh advice: fsdp over a slice's chips (ICI), data
# across slices; see launch/README.md.
set -euo pipefail

name="" zone="" type="v5p-128" version="" project="" create=0 dry_run=0
repo="" ref="main"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --type) type="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --ref) ref="$2"; shift 2 ;;
    --create) create=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (the config and overrides go after --)" >&2; exit 2 ;;
  esac
done
[[ -n "$name" ]] || { echo "tpu_pod.sh: --name is required (the TPU VM's name)" >&2; exit 2; }
[[ -n "$zone" ]] || { echo "tpu_pod.sh: --zone is required, e.g. --zone us-east5-a" >&2; exit 2; }
[[ $# -ge 1 ]] || { echo "tpu_pod.sh: give the config after --, e.g. -- llama-8b train.out_dir=gs://..." >&2; exit 2; }

if [[ -z "$version" ]]; then  # the TPU VM runtime image that matches the generation
  case "$type" in
    v4-*) version="tpu-ubuntu2204-base" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v5litepod-*|v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) echo "tpu_pod.sh: no default runtime for --type $type; give --version" >&2; exit 2 ;;
  esac
fi
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
[[ -n "$project" ]] && where+=(--project "$project")

run() {  # print, and unless --dry-run, execute
  printf '%q ' "$@"; echo
  [[ $dry_run -eq 1 ]] || "$@"
}

# 1. the slice
if [[ $create -eq 1 ]]; then
  if [[ $dry_run -eq 0 ]] && "${gcloud_tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
    echo "tpu_pod.sh: $name exists; reusing it"
  else
    run "${gcloud_tpu[@]}" create "$name" "${where[@]}" --accelerator-type "$type" --version "$version"
  fi
fi

# 2. jaxllm on every worker (jax[tpu] brings libtpu)
pip_install="python3 -m pip install -q -U 'jax[tpu]' && python3 -m pip install -q -e ."
if [[ -n "$repo" ]]; then
  install="set -e; if [ ! -d jaxllm ]; then git clone $(printf '%q' "$repo") jaxllm; fi; cd jaxllm"
  install+="; git fetch -q origin $(printf '%q' "$ref") && git checkout -q FETCH_HEAD; $pip_install"
else
  here=$(cd "$(dirname "$0")/.." && pwd)
  archive="${TMPDIR:-/tmp}/jaxllm-src.tar.gz"
  run git -C "$here" archive --format=tar.gz -o "$archive" HEAD
  run "${gcloud_tpu[@]}" scp "$archive" "$name:jaxllm-src.tar.gz" "${where[@]}" --worker=all
  install="set -e; rm -rf jaxllm && mkdir jaxllm && tar -xzf jaxllm-src.tar.gz -C jaxllm && cd jaxllm; $pip_install"
fi
run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$install"

# 3. the run, started on all workers together, in the background of each
args=$(printf '%q ' "$@")
start="cd jaxllm && nohup jaxllm train $args > jaxllm-train.log 2>&1 &"
run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$start"

# 4. worker 0 speaks for the run (the others stay quiet)
run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=0 --command "tail -F jaxllm/jaxllm-train.log"
