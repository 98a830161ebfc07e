#!/bin/bash
# The body of every llmlaunch Slurm job (slurm/train.sh and the train.sbatch that `plan --emit`
# writes exec it after their #SBATCH lines). Arguments: [RUN.yaml [RUN_DIR [section.key=value ...]]].
#
# - MASTER_ADDR is the first host of the allocation, MASTER_PORT a free port on it; srun starts one
#   rank per task (no ssh, no hostfile), RANK/LOCAL_RANK/WORLD_SIZE come from SLURM_* variables.
# - Before any rank starts, the data is checked against the model (one process, this host), then
#   preflight runs on every rank unless LLMLAUNCH_PREFLIGHT=0.
# - USR1 (sent by --signal=B:USR1@S before the time limit, or scancel --signal=USR1 --batch) and TERM
#   are handled from the first line to the last (docs/launch.md, "Signals"): before the ranks start,
#   the job stops and requeues without starting them (a preflight under way is ended); once they
#   run, the signal is forwarded to them: they agree on a step, checkpoint it (when there is a step
#   to save), write RUN_DIR/stopped.json and exit; the job then requeues itself and the ranks resume.
set -uo pipefail

STOP="${LLMLAUNCH_EARLY_STOP:-}"   # a signal the sbatch script caught before exec'ing this body
unset LLMLAUNCH_EARLY_STOP
CHILD=""
# bash runs a trap only between foreground commands: every long phase runs in the background and
# this shell waits for it (run_phase), so a signal is acted on at once
RESENDER=""
PHASE=start
forward_stop() {  # pass $STOP to the running phase
  [ -n "$STOP" ] && [ -n "$CHILD" ] || return 0
  if [ "$PHASE" != ranks ]; then
    kill -"$STOP" "$CHILD" 2>/dev/null
    return 0
  fi
  [ -z "$RESENDER" ] || return 0
  # A rank takes the signal from the moment it holds it (it then writes RUN_DIR/.signals/held-RANK:
  # a signal in its first milliseconds would kill it), and srun drops a signal sent before its
  # tasks are launched: wait until every rank holds it, then send it, and send USR1 again every
  # 2 s until srun is gone (a rank acts on the first and ignores the rest; not TERM, on which
  # srun ends the step when repeated)
  ( sig="$STOP"; ntasks="${SLURM_NTASKS:-1}"
    while kill -0 "$CHILD" 2>/dev/null; do
      if [ "$(ls "$RUN_DIR/.signals" 2>/dev/null | wc -l)" -ge "$ntasks" ]; then
        kill -"$sig" "$CHILD" 2>/dev/null
        [ "$sig" = USR1 ] || break
        sleep 2
      else
        sleep 0.2
      fi
    done ) &
  RESENDER=$!
}
on_signal() {
  [ -n "$STOP" ] || STOP="$1"
  echo "llmlaunch: $1 received"
  forward_stop
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

run_phase() {  # run "$@" in the background, wait for it through signals; its exit code
  "$@" &
  CHILD=$!
  forward_stop   # a signal that came while it was being started
  local rc
  while true; do
    wait "$CHILD"
    rc=$?
    kill -0 "$CHILD" 2>/dev/null || break   # wait returned for a trap: keep waiting
  done
  CHILD=""
  return "$rc"
}

requeue_unstarted() {  # a stop signal before the ranks ran: nothing to save, come back later
  echo "llmlaunch: stopped ($STOP) before training started: no new checkpoint; requeueing job" \
       "${SLURM_JOB_ID:-?}"
  scontrol requeue "${SLURM_JOB_ID:-0}" || echo "llmlaunch: error: scontrol requeue failed" >&2
  exit 0
}

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
if [ "${LLMLAUNCH_ELASTIC:-0}" -ge 1 ] 2>/dev/null; then
  # an elastic job (plan --emit --min-nodes): the layout for the hosts this start got, dp from
  # the ranks and the global batch kept (launcher/elastic.py); the ranks reshard the checkpoint
  PER_NODE="${SLURM_NTASKS_PER_NODE:-$(( SLURM_NTASKS / SLURM_JOB_NUM_NODES ))}"
  PER_NODE="${PER_NODE%%(*}"   # "4(x2)" when Slurm lists it per node
  ELASTIC="$(python3 -m llmlaunch.launcher.elastic --config "$CONFIG" --world "$SLURM_NTASKS" \
             --tasks-per-node "$PER_NODE" "${SETS[@]}")" || exit 2
  for kv in $ELASTIC; do SETS+=(--set "$kv"); done
fi

# MASTER_ADDR: the first host of the allocation (where this script runs) as an address every host
# dials, never loopback on a multi-host job (launcher/hostnet.py); LLMLAUNCH_MASTER_ADDR pins one
FIRST_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MASTER_ADDR="${LLMLAUNCH_MASTER_ADDR:-$(python3 -m llmlaunch.launcher.hostnet master-addr "$FIRST_NODE" "${SLURM_JOB_NUM_NODES:-1}")}" || exit 2
# a free port on this (the first) node; LLMLAUNCH_MASTER_PORT pins one. MASTER_PORT and the rank
# variables of the submitting shell (sbatch exports its environment) are not trusted.
MASTER_PORT="${LLMLAUNCH_MASTER_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}"
export MASTER_ADDR MASTER_PORT
unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
echo "llmlaunch: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0}: ${SLURM_NTASKS} ranks on" \
     "${SLURM_JOB_NUM_NODES} node(s) (${SLURM_JOB_NODELIST}), master ${FIRST_NODE} ${MASTER_ADDR}:${MASTER_PORT}," \
     "run dir ${RUN_DIR}"
rm -f "$RUN_DIR/stopped.json"
rm -rf "$RUN_DIR/.ranks"   # where this start's ranks run: RUN_DIR/ranks.json (launcher/placement.py)
# each task, on its own host, sets GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME (unless the user set
# them) to the interface that reaches MASTER_ADDR, then execs the rank (launcher/hostnet.py)
ON_HOST=(python3 -m llmlaunch.launcher.hostnet exec --)
[ -z "$STOP" ] || requeue_unstarted

# the data against the model: one line, here, instead of an error from every rank
if ! run_phase python3 -m llmlaunch.launcher.run_data --config "$CONFIG" --run-dir "$RUN_DIR" "${SETS[@]}"; then
  [ -z "$STOP" ] || requeue_unstarted
  echo "llmlaunch: error: the data does not fit the model (above); nothing was started" >&2
  exit 2
fi
[ -z "$STOP" ] || requeue_unstarted

if [ "${LLMLAUNCH_PREFLIGHT:-1}" != 0 ]; then
  if ! run_phase srun --kill-on-bad-exit=1 --output="$RUN_DIR/logs/preflight-%j-%t.out" \
       "${ON_HOST[@]}" python3 -m llmlaunch.launcher.preflight --config "$CONFIG" --run-dir "$RUN_DIR" "${SETS[@]}"; then
    [ -z "$STOP" ] || requeue_unstarted
    echo "llmlaunch: error: preflight failed; see $RUN_DIR/logs/preflight-${SLURM_JOB_ID}-*.out" >&2
    exit 1
  fi
  [ -z "$STOP" ] || requeue_unstarted
fi

# srun forwards USR1/TERM (from on_signal) to every task; the ranks hold them until their first
# step boundary, so a signal during their start-up is acted on, and their children (DeepSpeed's
# extension builds) are shielded from it
PHASE=ranks
rm -rf "$RUN_DIR/.signals"
START="${SLURM_RESTART_COUNT:-0}"
TRAIN_LOGS="$RUN_DIR/logs/train-${SLURM_JOB_ID}.${START}"   # one set per start of the job
# a rank whose collective fails writes which ranks and hosts stopped answering here (liveness.py)
export LLMLAUNCH_LOST_FILE="$RUN_DIR/logs/lost-${SLURM_JOB_ID}.${START}.txt"
rm -f "$LLMLAUNCH_LOST_FILE"
run_phase srun --kill-on-bad-exit=1 --output="${TRAIN_LOGS}-%t.out" \
  "${ON_HOST[@]}" python3 -m llmlaunch.launcher.rank --config "$CONFIG" --run-dir "$RUN_DIR" "${SETS[@]}"
rc=$?
[ -z "$RESENDER" ] || kill "$RESENDER" 2>/dev/null
if [ "$rc" -eq 0 ] && [ -f "$RUN_DIR/stopped.json" ]; then
  summary="$(python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("after step {}, checkpoint {}".format(r["step"], r["checkpoint"]) if r.get("checkpoint") else "before the first step, nothing to checkpoint")' "$RUN_DIR/stopped.json")"
  echo "llmlaunch: stopped (${STOP:-signal}) $summary; requeueing job ${SLURM_JOB_ID}"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
[ "$rc" -eq 0 ] && { echo "llmlaunch: training finished"; exit 0; }
# A rank whose collective failed names the ranks and hosts that stopped answering (liveness.py): a
# host or rank was lost. Say which, and requeue (at most LLMLAUNCH_MAX_RESTARTS starts of this job
# in all, default 2): the requeued job resumes from the last complete checkpoint.
# the line that names ranks and hosts; else the first (rank 0's host gone: "rendezvous store ...").
# srun can return before a failed rank wrote it (a stop signal ends the step while the rank reads
# the heartbeats for 2.5 s): wait up to 4 s for it.
for _ in $(seq 1 40); do [ -s "$LLMLAUNCH_LOST_FILE" ] && break; sleep 0.1; done
lost="$(grep -m 1 -v 'rendezvous store' "$LLMLAUNCH_LOST_FILE" 2>/dev/null || head -n 1 "$LLMLAUNCH_LOST_FILE" 2>/dev/null || true)"
if [ -n "$lost" ]; then
  echo "llmlaunch: error: lost a peer: $lost" >&2
  if [ "$START" -lt "${LLMLAUNCH_MAX_RESTARTS:-2}" ]; then
    echo "llmlaunch: requeueing job ${SLURM_JOB_ID} after a lost peer (start $((START + 1)) of at most" \
         "$(( ${LLMLAUNCH_MAX_RESTARTS:-2} + 1 ))); it resumes from the last complete checkpoint"
    # Slurm requeues a job on its own when it finds a node down first (--requeue): then this fails
    scontrol requeue "$SLURM_JOB_ID" 2>/dev/null || echo "llmlaunch: job ${SLURM_JOB_ID} is requeued already (Slurm saw the node fail)"
    if [ "${LLMLAUNCH_ELASTIC:-0}" -ge 1 ] 2>/dev/null; then
      # Slurm keeps the task count of a job's first start (12 on 3 hosts) through a requeue, so the
      # job would wait for all its hosts: ask for the minimum (LLMLAUNCH_ELASTIC hosts) instead
      scontrol update JobId="$SLURM_JOB_ID" NumNodes="$LLMLAUNCH_ELASTIC" \
        NumTasks="$(( LLMLAUNCH_ELASTIC * ${PER_NODE:-1} ))" \
        && echo "llmlaunch: elastic: the requeued job asks for $LLMLAUNCH_ELASTIC host(s)"
    fi
    exit 0
  fi
  echo "llmlaunch: error: not requeued: job ${SLURM_JOB_ID} has started $((START + 1)) times" \
       "(LLMLAUNCH_MAX_RESTARTS=${LLMLAUNCH_MAX_RESTARTS:-2})" >&2
fi
echo "llmlaunch: error: training failed (exit $rc); logs in $RUN_DIR/logs" >&2
exit "$rc"
