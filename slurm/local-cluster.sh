#!/bin/bash
# A single-node Slurm cluster on localhost, for tests and CI (run as root; Debian's slurmctld, slurmd,
# slurm-client and munge installed). Usage:
#   slurm/local-cluster.sh start [DIR]   # writes DIR/slurm.conf, starts munged, slurmctld, slurmd
#   slurm/local-cluster.sh stop [DIR]    # stops them (munged last) and waits until they are gone
# DIR defaults to $LLMLAUNCH_SLURM_DIR or /tmp/llmlaunch-slurm. Point SLURM_CONF at DIR/slurm.conf
# for sbatch, squeue and scontrol. CPUS (default 8) is the CPU count the node declares: more ranks
# than cores is fine for tiny CPU jobs.
set -euo pipefail
ACTION="${1:?usage: local-cluster.sh start|stop [DIR]}"
DIR="${2:-${LLMLAUNCH_SLURM_DIR:-/tmp/llmlaunch-slurm}}"
CPUS="${CPUS:-8}"
MUNGE_PID=/run/munge/munged.pid

stop_pidfile() {  # SIGTERM the daemon in a pid file and wait until it is gone
  local file="$1" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

write_conf() {
  cat > "$DIR/slurm.conf" <<CONF
ClusterName=llmlaunch
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerParameters=sched_interval=2,bf_interval=1
MinJobAge=5
KillWait=5
ReturnToService=2
KillOnBadExit=1
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
}

case "$ACTION" in
  start)
    mkdir -p "$DIR"
    rm -rf "$DIR/state" "$DIR/spool"
    mkdir -p "$DIR/state" "$DIR/spool"
    write_conf
    install -d -o munge -g munge -m 0755 /run/munge
    if ! { [ -f "$MUNGE_PID" ] && kill -0 "$(cat "$MUNGE_PID")" 2>/dev/null; }; then
      runuser -u munge -- /usr/sbin/munged
    fi
    slurmctld -f "$DIR/slurm.conf"
    slurmd -f "$DIR/slurm.conf" -N localhost
    export SLURM_CONF="$DIR/slurm.conf"
    for _ in $(seq 1 100); do
      state="$(sinfo -h -n localhost -o %t 2>/dev/null || true)"
      case "$state" in idle|mix|alloc) echo "slurm: localhost $state ($DIR)"; exit 0;; esac
      sleep 0.2
    done
    echo "slurm: the node did not come up; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
    exit 1
    ;;
  stop)
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
    stop_pidfile "$MUNGE_PID"
    echo "slurm: stopped ($DIR)"
    ;;
  *)
    echo "usage: local-cluster.sh start|stop [DIR]" >&2
    exit 2
    ;;
esac
