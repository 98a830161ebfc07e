#!/bin/bash
# The body of every llmlaunch Slurm job (slurm/train.sh and the train.sbatch that `plan --emit`
# writes exec it after their #SBATCH lines). Arguments: [RUN.yaml [RUN_DIR [section.key=value ...]]].
#
# - MASTER_ADDR is the first host of the allocation, MASTER_PORT a free port on it; srun starts one
#   rank per task (no ssh, no hostfile), RANK/LOCAL_RANK/WORLD_SIZE come from SLURM_* variables.
# - preflight runs first unless LLMLAUNCH_PREFLIGHT=0.
# - USR1 (sent by --signal=B:USR1@S before the time limit, or scancel --signal=USR1 --batch) and TERM
#   are forwarded to the ranks, which agree on a step, checkpoint it, write RUN_DIR/stopped.json and
#   exit; the job then requeues itself and the ranks resume from that checkpoint.
set -uo pipefail

SUBMIT_DIR="${SLURM_SUBMIT_DIR:-$PWD}"
if [ $# -ge 1 ]; then
  CONFIG="$1"
else  # the tiny CPU config shipped with llmlaunch
  CONFIG="$(python3 -c 'from llmlaunch.config import resolve_config_path; print(resolve_config_path("tiny-cpu"))')" || exit 2
fi
if [ ! -f "$CONFIG" ]; then
  echo "llmlaunch: error: run config '$CONFIG' not found (give RUN.yaml as the first argument)" >&2
  exit 2
fi
CONFIG="$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")"
if [ $# -ge 2 ]; then
  RUN_DIR="$2"
elif [ $# -ge 1 ]; then
  RUN_DIR="$(dirname "$CONFIG")"
else
  RUN_DIR="$SUBMIT_DIR/runs/tiny-cpu"
fi
mkdir -p "$RUN_DIR/logs"
RUN_DIR="$(cd "$RUN_DIR" && pwd)"
SETS=()
for kv in "${@:3}"; do SETS+=(--set "$kv"); done

MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
# a free port on this (the first) node; LLMLAUNCH_MASTER_PORT pins one. MASTER_PORT and the rank
# variables of the submitting shell (sbatch exports its environment) are not trusted.
MASTER_PORT="${LLMLAUNCH_MASTER_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}"
export MASTER_ADDR MASTER_PORT
unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
echo "llmlaunch: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_NTASKS} ranks on" \
     "${SLURM_JOB_NUM_NODES} node(s), master ${MASTER_ADDR}:${MASTER_PORT}, run dir ${RUN_DIR}"

if [ "${LLMLAUNCH_PREFLIGHT:-1}" != 0 ]; then
  if ! srun --kill-on-bad-exit=1 --output="$RUN_DIR/logs/preflight-%j-%t.out" \
       python3 -m llmlaunch.launcher.preflight --config "$CONFIG" --run-dir "$RUN_DIR" "${SETS[@]}"; then
    echo "llmlaunch: error: preflight failed; see $RUN_DIR/logs/preflight-${SLURM_JOB_ID}-*.out" >&2
    exit 1
  fi
fi

# The payload runs in the background so that this shell can run its trap at once (bash runs traps
# only between foreground commands); srun forwards USR1/TERM to every task.
srun --kill-on-bad-exit=1 --output="$RUN_DIR/logs/train-%j-%t.out" \
  python3 -m llmlaunch.launcher.rank --config "$CONFIG" --run-dir "$RUN_DIR" "${SETS[@]}" &
SRUN_PID=$!
forward() { echo "llmlaunch: $1 received: asking the ranks to checkpoint and stop"; kill -"$1" "$SRUN_PID" 2>/dev/null; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
while true; do
  wait "$SRUN_PID"
  rc=$?
  kill -0 "$SRUN_PID" 2>/dev/null || break   # wait returned for a trap: keep waiting
done
if [ "$rc" -eq 0 ] && [ -f "$RUN_DIR/stopped.json" ]; then
  echo "llmlaunch: stopped with a checkpoint ($(cat "$RUN_DIR/stopped.json")); requeueing job ${SLURM_JOB_ID}"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
[ "$rc" -eq 0 ] && echo "llmlaunch: training finished" || echo "llmlaunch: error: training failed (exit $rc); logs in $RUN_DIR/logs" >&2
exit "$rc"
