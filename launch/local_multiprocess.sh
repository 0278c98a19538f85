#!/usr/bin/env bash
# Run one jaxllm command as N cooperating processes on this machine, joined over loopback.
#
# usage: launch/local_multiprocess.sh [--processes N] [--devices-each D] [--port P] [--dry-run] -- jaxllm ARGS...
#   e.g. launch/local_multiprocess.sh --processes 2 --devices-each 4 -- jaxllm train shakespeare-char train.steps=20
#
# Each process gets D virtual CPU devices (XLA_FLAGS), and the coordinator is
# 127.0.0.1:P (a free port when not given); JAXLLM_COORDINATOR / JAXLLM_NUM_PROCESSES /
# JAXLLM_PROCESS_ID tell jaxllm its place (jaxllm/parallel/distributed.py). The mesh
# spans all N*D devices exactly as it would span N hosts. Output lines are prefixed
# with the process rank; if any process fails, the others are stopped. This is the
# rehearsal of a multi-host run before anyone rents a pod.
set -euo pipefail

processes=2
devices_each=4
port=""
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes) processes="$2"; shift 2 ;;
    --devices-each) devices_each="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    *) echo "local_multiprocess.sh: unknown option $1 (the command goes after --)" >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "local_multiprocess.sh: no command; give it after --, e.g. -- jaxllm train shakespeare-char" >&2
  exit 2
fi
if ! [[ "$processes" =~ ^[1-9][0-9]*$ && "$devices_each" =~ ^[1-9][0-9]*$ ]]; then
  echo "local_multiprocess.sh: --processes=$processes and --devices-each=$devices_each must be positive integers" >&2
  exit 2
fi
if [[ -z "$port" ]]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

for ((i = 0; i < processes; i++)); do
  envs=(JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$devices_each"
        "JAXLLM_COORDINATOR=127.0.0.1:$port" "JAXLLM_NUM_PROCESSES=$processes" "JAXLLM_PROCESS_ID=$i")
  if [[ $dry_run -eq 1 ]]; then
    echo "env ${envs[*]} $*"
    continue
  fi
  ( env "${envs[@]}" "$@" 2>&1 | sed -u "s/^/[$i] /" ) &
  pids+=($!)
done
[[ $dry_run -eq 1 ]] && exit 0

status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then status=1; cleanup; fi
done
trap - EXIT
exit $status
