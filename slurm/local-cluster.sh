#!/bin/bash
# A Slurm cluster on this machine, for tests and CI. Needs root, iproute2 (ip), util-linux (unshare,
# nsenter) and Debian's slurmctld, slurmd, slurm-client and munge (tests/setup.sh installs them).
#
#   slurm/local-cluster.sh start [DIR]           # one host: localhost (127.0.0.1)
#   NODES=3 slurm/local-cluster.sh start [DIR]   # three hosts node1..node3
#   slurm/local-cluster.sh stop [DIR]            # stops what start made, even after a failed start
#   NODE=2 slurm/local-cluster.sh start-node [DIR]   # host 2's slurmd again, after a test killed it
#
# DIR (default $LLMLAUNCH_SLURM_DIR or /tmp/llmlaunch-slurm) holds slurm.conf, state, spool, pid and
# log files. Point SLURM_CONF at DIR/slurm.conf for sbatch, squeue and scontrol. CPUS (default 8) is
# the CPU count each node declares: more ranks than cores is fine for tiny CPU jobs.
#
# NODES >= 2: every host is a network namespace (llml-nodeI) with its own hostname (a UTS
# namespace), its own address 10.231.0.(10+I) on a private bridge (llml-br0, 10.231.0.1/24) that
# this script creates, its own /etc/hosts (DIR/hosts, bind-mounted in a mount namespace: the
# machine's own file is untouched) and its own slurmd (DIR/spool/nodeI, DIR/slurmd-nodeI.pid,
# DIR/slurmd-nodeI.log). One slurmctld (on the bridge address) and one munged serve them all.
# Every namespace and link is recorded in DIR/created as soon as it is made; `stop` removes exactly
# those (and the daemons from their pid files, never by process name) and waits until they are gone.
# Traffic goes only to these addresses and loopback.
set -Eeuo pipefail
ACTION="${1:?usage: [NODES=N] local-cluster.sh start|stop [DIR]}"
DIR="${2:-${LLMLAUNCH_SLURM_DIR:-/tmp/llmlaunch-slurm}}"
CPUS="${CPUS:-8}"
NODES="${NODES:-1}"
MUNGE_PID=/run/munge/munged.pid
SUBNET=10.231.0
BRIDGE=llml-br0
CONTROLLER_ADDR="$SUBNET.1"

stop_pidfile() {  # SIGTERM the daemon in a pid file and wait until it is gone
  local file="$1" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$file"
}

node_name() { echo "node$1"; }
node_addr() { echo "$SUBNET.$((10 + $1))"; }
netns_name() { echo "llml-node$1"; }
veth_name() { echo "llml-v$1"; }

common_conf() {
  # Job ids start where no earlier cluster's did: a job step daemon of a stopped cluster goes on
  # reporting its job (as 1) for a while, and a new cluster that reused the id took it for its
  # own job 1, which it then ended ("CANCELLED" with nobody cancelling)
  cat <<CONF
FirstJobId=$(( ($(date +%s%N) / 1000000) % 50000000 + 1 ))
ClusterName=llmlaunch
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
StateSaveLocation=$DIR/state
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmctldLogFile=$DIR/slurmctld.log
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
# a job in the partition urgent preempts (requeues) jobs of the default partition, as a cluster's
# higher-priority queue does: tests preempt a running job with it
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
CONF
}

write_conf_single() {
  { common_conf
    cat <<CONF
SlurmctldHost=localhost
SlurmdSpoolDir=$DIR/spool
SlurmdPidFile=$DIR/slurmd.pid
SlurmdLogFile=$DIR/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=2
CONF
  } > "$DIR/slurm.conf"
}

write_conf_multi() {
  local i names=()
  { common_conf
    # the controller must be named by this machine's own hostname ("not a valid controller" else)
    echo "SlurmctldHost=$(hostname)($CONTROLLER_ADDR)"
    echo "SlurmdSpoolDir=$DIR/spool/%n"
    echo "SlurmdPidFile=$DIR/slurmd-%n.pid"
    echo "SlurmdLogFile=$DIR/slurmd-%n.log"
    # a lost host comes back within seconds in tests (default 300 s)
    echo "SlurmdTimeout=10"
    for i in $(seq 1 "$NODES"); do
      echo "NodeName=$(node_name "$i") NodeAddr=$(node_addr "$i") NodeHostname=$(node_name "$i") CPUs=$CPUS State=UNKNOWN"
      names+=("$(node_name "$i")")
    done
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${names[*]}") Default=YES MaxTime=INFINITE State=UP PriorityTier=1"
    echo "PartitionName=urgent Nodes=$(IFS=,; echo "${names[*]}") MaxTime=INFINITE State=UP PriorityTier=2"
  } > "$DIR/slurm.conf"
  { echo "127.0.0.1 localhost"
    echo "$CONTROLLER_ADDR $(hostname)"
    for i in $(seq 1 "$NODES"); do echo "$(node_addr "$i") $(node_name "$i")"; done
  } > "$DIR/hosts"
}

record() { echo "$1 $2" >> "$DIR/created"; }   # kind name: made by this script, removed by stop

make_network() {
  local i ns veth
  ip link add "$BRIDGE" type bridge
  record bridge "$BRIDGE"
  ip addr add "$CONTROLLER_ADDR/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for i in $(seq 1 "$NODES"); do
    ns="$(netns_name "$i")"; veth="$(veth_name "$i")"
    ip netns add "$ns"
    record netns "$ns"
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    record link "$veth"
    ip link set "$veth" master "$BRIDGE"
    ip link set "$veth" up
    ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
  done
}

start_slurmd() {  # host I's slurmd in its namespace: its hostname, its hosts file, its network
  local i="$1" name
  name="$(node_name "$i")"
  mkdir -p "$DIR/spool/$name"
  # not `ip netns exec` (it remounts /sys and slurmd then finds no cgroup fs): nsenter --net only
  unshare --uts --mount sh -c 'mount --bind "$1" /etc/hosts && hostname "$2" && exec nsenter --net="/run/netns/$3" slurmd -f "$4" -N "$2"' \
    sh "$DIR/hosts" "$name" "$(netns_name "$i")" "$DIR/slurm.conf"
}

wait_nodes_up() {
  local want="$1" up
  export SLURM_CONF="$DIR/slurm.conf"
  for _ in $(seq 1 150); do
    up="$(sinfo -h -N -o '%N %t' 2>/dev/null | grep -cE ' (idle|mix|alloc)$' || true)"
    if [ "$up" -ge "$want" ]; then
      echo "slurm: $want node(s) up: $(sinfo -h -N -o '%N' | tr '\n' ' ')($DIR)"
      return 0
    fi
    sleep 0.2
  done
  echo "slurm: the nodes did not come up; see $DIR/slurmctld.log and $DIR/slurmd*.log" >&2
  return 1
}

stop_all() {
  local f kind name
  # every slurmd and the controller at once (each takes ~2 s to go), then munged
  for f in "$DIR"/slurmd*.pid "$DIR/slurmctld.pid"; do [ -e "$f" ] && stop_pidfile "$f" & done
  wait
  stop_pidfile "$MUNGE_PID"
  if [ -f "$DIR/created" ]; then
    # namespaces first (their end of each veth pair goes with them), then links, then the bridge.
    # What still runs in a host's namespace (a job step's slurmstepd and ranks, left when the
    # cluster stops mid-job) is ended first, by the pids `ip netns pids` lists for it.
    while read -r kind name; do
      [ "$kind" = netns ] || continue
      if ip netns list | grep -qE "^$name( |$)"; then
        for pid in $(ip netns pids "$name"); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$name" || true
      fi
    done < "$DIR/created"
    while read -r kind name; do
      [ "$kind" = link ] || continue
      if ip link show "$name" >/dev/null 2>&1; then ip link del "$name" || true; fi
    done < "$DIR/created"
    while read -r kind name; do
      [ "$kind" = bridge ] || continue
      if ip link show "$name" >/dev/null 2>&1; then ip link del "$name" || true; fi
    done < "$DIR/created"
    for _ in $(seq 1 50); do
      left=""
      while read -r kind name; do
        case "$kind" in
          netns) ip netns list | grep -qE "^$name( |$)" && left="$left $name" ;;
          *) ip link show "$name" >/dev/null 2>&1 && left="$left $name" ;;
        esac
      done < "$DIR/created"
      [ -z "$left" ] && break
      sleep 0.1
    done
    if [ -n "$left" ]; then
      echo "slurm: could not remove:$left" >&2
      return 1
    fi
    rm -f "$DIR/created"
  fi
  rm -f "$DIR/hosts"
}

case "$ACTION" in
  start)
    case "$NODES" in ''|*[!0-9]*|0) echo "local-cluster.sh: NODES='$NODES' is not a host count (1, 2, 3 ...)" >&2; exit 2;; esac
    if [ "$NODES" -gt 200 ]; then echo "local-cluster.sh: NODES=$NODES: at most 200 hosts" >&2; exit 2; fi
    mkdir -p "$DIR"
    if [ -f "$DIR/created" ]; then
      echo "local-cluster.sh: $DIR already holds a cluster's namespaces (stop it first: local-cluster.sh stop $DIR)" >&2
      exit 2
    fi
    rm -rf "$DIR/state" "$DIR/spool"
    mkdir -p "$DIR/state" "$DIR/spool"
    echo "$NODES" > "$DIR/nodes"
    install -d -o munge -g munge -m 0755 /run/munge
    if ! { [ -f "$MUNGE_PID" ] && kill -0 "$(cat "$MUNGE_PID")" 2>/dev/null; }; then
      runuser -u munge -- /usr/sbin/munged
    fi
    if [ "$NODES" -eq 1 ]; then
      write_conf_single
      slurmctld -f "$DIR/slurm.conf"
      slurmd -f "$DIR/slurm.conf" -N localhost
    else
      if ip link show "$BRIDGE" >/dev/null 2>&1; then
        echo "local-cluster.sh: bridge $BRIDGE exists already (another local cluster runs: stop it first)" >&2
        exit 2
      fi
      : > "$DIR/created"
      write_conf_multi
      trap 'echo "slurm: start failed; cleaning up" >&2; stop_all || true' ERR
      make_network
      slurmctld -f "$DIR/slurm.conf"
      for i in $(seq 1 "$NODES"); do start_slurmd "$i"; done
      trap - ERR
    fi
    wait_nodes_up "$NODES"
    ;;
  start-node)  # NODE=I: start host I's slurmd again (a test killed it to lose the host)
    NODES="$(cat "$DIR/nodes")"
    case "${NODE:-}" in ''|*[!0-9]*) echo "local-cluster.sh: start-node needs NODE=I (1..$NODES)" >&2; exit 2;; esac
    if [ "$NODES" -lt 2 ] || [ "$NODE" -lt 1 ] || [ "$NODE" -gt "$NODES" ]; then
      echo "local-cluster.sh: NODE=$NODE is not a host of the $NODES-host cluster in $DIR" >&2; exit 2
    fi
    start_slurmd "$NODE"
    echo "slurm: started $(node_name "$NODE")'s slurmd ($DIR)"
    ;;
  stop)
    stop_all
    echo "slurm: stopped ($DIR)"
    ;;
  *)
    echo "usage: [NODES=N] local-cluster.sh start|stop [DIR]" >&2
    exit 2
    ;;
esac
