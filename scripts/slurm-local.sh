#!/usr/bin/env bash
# slurm-local.sh — a Slurm cluster on this machine, for corral's Slurm placement tests: a single
# node (the default), or a controller and N nodes, each node in a network namespace of its own.
#
#   scripts/slurm-local.sh install   # apt-get slurm-wlm + munge, only if missing (idempotent)
#   scripts/slurm-local.sh start     # munged + slurmctld + slurmd; returns once the node is idle
#   scripts/slurm-local.sh stop      # kills every engine daemon (and slurmstepd), waits until gone
#   scripts/slurm-local.sh status    # exit 0 iff the cluster is usable
#
#   scripts/slurm-local.sh start --nodes 3   # the multi-node cluster (below); returns once all idle
#   scripts/slurm-local.sh stop --nodes      # stops it, removes its namespaces, veths and bridge
#   scripts/slurm-local.sh status --nodes 3  # exit 0 iff it runs with 3 usable nodes
#   scripts/slurm-local.sh start-node n2     # a failed node back: its slurmd, then resume
#
# Verified with Debian 12 packages (Slurm 22.05), as root, without systemd as PID 1.
# Env: SLURM_LOCAL_TIMEOUT (seconds for start/stop polls, default 30);
#      SLURM_LOCAL_MIN_JOB_AGE (slurm.conf MinJobAge, default 10: how long finished jobs stay
#      visible to squeue/scontrol before only `sacct -c` (jobcomp file) knows them; short,
#      so the tests see both).
# Partitions: `debug` (default, up) and `closed` (down: a job sent there stays PENDING,
# reason PartitionDown — how the tests get a queued job).
#
# Multi-node mode (--nodes N, 1..20): one machine plays N+1 hosts.
# - The controller `ctl` (slurmctld, and a munged of its own) runs in a UTS namespace with
#   hostname ctl, in the root network namespace, at 10.77.0.1 on a bridge `corral-br0` this
#   script creates. Node nI (slurmd -N nI) runs in network namespace `corral-nI`, with
#   10.77.0.(10+I) on its veth (`eth0` inside, `crl-nI` on the bridge), and in a UTS namespace
#   with hostname nI. Its jobs inherit both: 127.0.0.1 there is the node's own loopback, and
#   this host (where corral's daemon runs) is 10.77.0.1. Nothing routes out of 10.77.0.0/24 and
#   no name is looked up in DNS (NodeAddr, SlurmctldHost=ctl(10.77.0.1), munged --origin).
# - Shared with this host, as on a real cluster with a shared filesystem: the filesystem (the
#   munge socket is a path, so the nodes reach munged), the munge key, /proc, the cgroups
#   (proctrack/cgroup puts node nI's jobs under slurm_nI/).
# - Its own, so it runs beside the single-node cluster: config, state, spool, logs and pid files
#   in $SLURM_LOCAL_MULTI_DIR (default /run/corral-slurm-multi), munge socket there, ports
#   6917/6918, cluster name corralmulti, job ids from 1000000 (an id says which cluster it is in).
#   Clients use it with SLURM_CONF=/run/corral-slurm-multi/slurm.conf.
# - Partitions as above, over every node; `debug` is LLN (least loaded node first), so jobs
#   that name no node spread over the nodes.
# - The single-node commands leave it alone: they act only on processes in this script's UTS
#   namespace, and none of the multi-node cluster's daemons or jobs is. `stop --nodes` kills
#   what runs in the nodes' network namespaces (slurmd, slurmstepd, jobs) and the controller's
#   daemons by pid, then removes the namespaces, veths, bridge and the nodes' empty cgroups.
set -euo pipefail

TIMEOUT=${SLURM_LOCAL_TIMEOUT:-30}
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
CTLD_STATE=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
MUNGE_RUN=/run/munge

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }
[[ $(id -u) -eq 0 ]] || die "must run as root (daemons, /etc/slurm, /run)"

# wait_for SECONDS CMD...: re-run CMD every 0.1 s until it succeeds or the deadline passes.
# This is the only way the script synchronises with the daemons (no fixed sleeps).
wait_for() {
  local deadline=$(( $(now_ms) + $1 * 1000 )); shift
  until "$@"; do
    (( $(now_ms) < deadline )) || return 1
    sleep 0.1
  done
}

# The pids read from stdin that run in this script's UTS namespace: the single-node cluster's.
# (The multi-node cluster's daemons and jobs each have a UTS namespace of their own.)
SELF_UTS=$(readlink /proc/$$/ns/uts)
on_this_host() { local p; while read -r p; do [[ $(readlink "/proc/$p/ns/uts" 2>/dev/null) == "$SELF_UTS" ]] && echo "$p"; done; return 0; }
# Live (non-zombie) pids of an exact process name. pgrep -x also matches zombies, and PID 1
# on this machine reaps orphans only every ~1-2 s, so a dead daemon can linger as <defunct>.
live_pids() { ps -eo pid=,stat=,comm= | awk -v n="$1" '$3 == n && $2 !~ /^Z/ { print $1 }' | on_this_host; }
running() { [[ -n $(live_pids "$1") ]]; }
none_running() { local d; for d in "$@"; do ! running "$d" || return 1; done; }
zombies() { ps -eo pid=,stat=,comm= | awk '$2 ~ /^Z/ && $3 ~ /^(slurmctld|slurmd|slurmstepd|munged)$/'; }
no_zombies() { [[ -z $(zombies) ]]; }
# Pids of job processes still in Slurm's cgroups (proctrack/cgroup puts every job there).
all_job_pids() { cat /sys/fs/cgroup/*/slurm*/uid_*/job_*/step_*/cgroup.procs 2>/dev/null | sort -u; }
job_pids() { all_job_pids | on_this_host; }
no_job_pids() { [[ -z $(job_pids) ]]; }
# sinfo retries for ~9 s when no controller answers: bound each poll.
node_state() { timeout 3 sinfo -h -o %T 2>/dev/null | head -n1; }
node_idle() { [[ $(node_state) == idle ]]; }
# idle, mixed, allocated: the node accepts work (allocated only means busy, jobs queue).
node_usable() { [[ $(node_state) =~ ^(idle|mixed|allocated)$ ]]; }
have_all() { local c; for c in sbatch squeue slurmctld slurmd munged; do command -v "$c" >/dev/null || return 1; done; }
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

cmd_install() {
  if have_all; then say "already installed ($(slurmctld -V))"; return 0; fi
  command -v apt-get >/dev/null || die "no apt-get: cannot install slurm-wlm/munge on this system"
  local t0; t0=$(now_ms)
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q || die "apt-get update failed (package registry unreachable?)"
  apt-get install -y -q slurm-wlm munge || die "apt-get install slurm-wlm munge failed"
  have_all || die "slurm/munge commands still missing after install"
  # The munge package generates /etc/munge/munge.key (owner munge, mode 0400); check it did.
  [[ -s /etc/munge/munge.key ]] || die "/etc/munge/munge.key missing after install"
  say "installed $(slurmctld -V) in $(( $(now_ms) - t0 )) ms"
}

write_conf() {
  local host=$1
  mkdir -p "$CONF_DIR"
  # CPUs=256 + SlurmdParameters=config_overrides: lets hundreds of light agent jobs run at once
  # on 2 vCPUs (slurmd warns about the mismatch but does not drain the node).
  # batch_sched_delay=0 + sched_min_interval: jobs start in ms instead of ~3 s each.
  # jobcomp/filetxt: without slurmdbd, `sacct -c` can still read finished jobs after MinJobAge.
  cat >"$CONF_DIR/slurm.conf" <<EOF
ClusterName=corraltest
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,default_queue_depth=1000,sched_min_interval=100000
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.txt
ReturnToService=2
MinJobAge=${SLURM_LOCAL_MIN_JOB_AGE:-10}
KillWait=5
MpiDefault=none
SlurmdParameters=config_overrides
NodeName=$host CPUs=256 Boards=1 SocketsPerBoard=1 CoresPerSocket=256 ThreadsPerCore=1 RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=closed Nodes=$host MaxTime=INFINITE State=DOWN
EOF
  # This machine mounts cgroup v1 controllers (v2 only beside them, at /sys/fs/cgroup/unified),
  # already mounted: proctrack/cgroup must use v1 and must not try to mount anything.
  printf 'CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n' >"$CONF_DIR/cgroup.conf"
}

cmd_start() {
  command -v slurmctld >/dev/null || die "slurm not installed: run '$0 install' first"
  # (mixed/allocated count too: restarting would kill the jobs that run there.)
  if running munged && running slurmctld && running slurmd && node_usable; then
    say "already running, node $(node_state)"; return 0
  fi
  local t0 host; t0=$(now_ms); host=$(hostname -s)
  # A half-started cluster (one daemon up, node down) is reset rather than patched.
  if ! none_running slurmctld slurmd slurmstepd munged; then say "partial cluster found, stopping it first"; cmd_stop; fi

  # 1. munged must run as the munge user (it refuses root) and needs its socket dir.
  mkdir -p "$MUNGE_RUN" /var/log/munge /var/lib/munge && chown munge:munge "$MUNGE_RUN" /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged || die "munged failed to start (see /var/log/munge/munged.log)"
  wait_for "$TIMEOUT" munge_ok || die "munge -n | unmunge never succeeded"

  # 2. Directories and a clean controller state: stale job/node state from an earlier run
  #    would resurrect old jobs (ids, states) into a fresh cluster.
  mkdir -p "$CTLD_STATE" "$SLURMD_SPOOL" "$LOG_DIR" "$RUN_DIR"
  find "$CTLD_STATE" -mindepth 1 -delete
  # Job ids restart at 1 after the wipe: old jobcomp lines would answer `sacct -c -j 1` too.
  : >"$LOG_DIR/jobcomp.txt"
  write_conf "$host"

  # 3. Foreground daemons (-D) under setsid+nohup: they leave this shell's session, so they
  #    outlive it and are inherited by PID 1; logs go to $LOG_DIR (plus the LogFile settings).
  setsid nohup slurmctld -D >>"$LOG_DIR/slurmctld.out" 2>&1 </dev/null &
  setsid nohup slurmd -D >>"$LOG_DIR/slurmd.out" 2>&1 </dev/null &

  # 4. Usable means the node registered and is idle; ReturnToService=2 lets it leave DOWN.
  if ! wait_for "$TIMEOUT" node_idle; then
    echo "node state: '$(node_state)'" >&2; tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
    die "node not idle within ${TIMEOUT}s"
  fi
  say "started (node $host idle) in $(( $(now_ms) - t0 )) ms"
}

# stop_daemon NAME SECONDS [PIDFILE]: TERM by pid file and by name (a pid file may be stale
# or missing), wait until no live process of that name is left, KILL if TERM was not enough.
stop_daemon() {
  [[ -s ${3:-} ]] && kill -TERM "$(cat "$3")" 2>/dev/null || true
  live_pids "$1" | xargs -r kill -TERM 2>/dev/null || true
  wait_for "$2" none_running "$1" && return 0
  say "$1 still running ${2}s after TERM, sending KILL"
  live_pids "$1" | xargs -r kill -KILL 2>/dev/null || true
  wait_for 5 none_running "$1" || true
}

cmd_stop() {
  local t0; t0=$(now_ms)
  # End every job first while slurmctld still answers, so slurmstepd kills each job's whole
  # cgroup (a killed slurmstepd would orphan the job's processes instead). SIGKILL to the batch
  # step acts at once; a plain scancel (and --full KILL) would wait KillWait after a TERM.
  # Client calls are bounded: without munged squeue hangs ~50 s, without slurmctld ~9 s.
  if running slurmctld && munge_ok && timeout 5 squeue -h -o %A >/dev/null 2>&1; then
    timeout 5 squeue -h -t running -o %A | xargs -r timeout 5 scancel --signal=KILL --batch 2>/dev/null || true
    timeout 5 squeue -h -o %A | xargs -r timeout 5 scancel 2>/dev/null || true
    wait_for 15 none_running slurmstepd || say "job steps still running after scancel"
  fi
  # Without a controller (crashed) jobs were not cancelled: kill their cgroups' processes.
  job_pids | xargs -r kill -KILL 2>/dev/null || true
  # A slurmstepd whose controller is gone ignores TERM while it retries its completion
  # message (its job is already dead by now), hence the short grace before KILL.
  stop_daemon slurmstepd 3
  # Order matters: slurmd before slurmctld (a slurmd whose controller is gone retries its
  # epilog-complete messages for MessageTimeout, ~10 s, before exiting), munged last (both
  # daemons authenticate through it until they are down).
  stop_daemon slurmd "$TIMEOUT" "$RUN_DIR/slurmd.pid"
  stop_daemon slurmctld "$TIMEOUT" "$RUN_DIR/slurmctld.pid"
  stop_daemon munged "$TIMEOUT" "$MUNGE_RUN/munged.pid"
  rm -f "$RUN_DIR"/*.pid
  # Anything forked into a job's cgroup meanwhile (e.g. by a dying slurmstepd) goes too.
  job_pids | xargs -r kill -KILL 2>/dev/null || true
  wait_for 5 no_job_pids || say "warning: job processes still alive: $(job_pids | paste -sd' ')"

  if ! none_running slurmctld slurmd slurmstepd munged; then
    pgrep -a -x 'slurmctld|slurmd|slurmstepd|munged' >&2 || true
    die "processes still running after stop"
  fi
  # The daemons were orphans of PID 1; it reaps them only every ~1-2 s here, so wait a little
  # for their zombies to go and report any that stay (they hold no resources but a pid).
  if ! wait_for 10 no_zombies; then say "warning: zombies not reaped by PID 1:"; zombies; fi
  say "stopped in $(( $(now_ms) - t0 )) ms"
}

cmd_status() {
  local d ok=0 state=
  for d in munged slurmctld slurmd; do
    if running "$d"; then echo "$d: running (pid $(live_pids "$d" | paste -sd' '))"; else echo "$d: not running"; ok=1; fi
  done
  running slurmctld && state=$(node_state || true); echo "node: ${state:-unknown}"
  [[ $state =~ ^(idle|mixed|allocated)$ ]] || ok=1
  (( ok == 0 )) && echo "cluster: usable" || echo "cluster: not usable"
  return "$ok"
}

# ---------------------------------------------------------------------------------------------
# Multi-node mode: a controller and N nodes, each node in its own network + UTS namespace.

MULTI_DIR=${SLURM_LOCAL_MULTI_DIR:-/run/corral-slurm-multi}
MULTI_CONF=$MULTI_DIR/slurm.conf
MULTI_NET=10.77.0            # a /24: the controller is .1 (on the bridge), node I is .(10+I)
MULTI_BRIDGE=corral-br0
MULTI_CTLD_PORT=6917         # the single-node cluster keeps Slurm's defaults, 6817/6818
MULTI_SLURMD_PORT=6918
MULTI_MAX_NODES=20
MUNGE_SOCKET=$MULTI_DIR/munge/munge.socket
node_ns() { echo "corral-n$1"; }       # network namespace of node I
node_veth() { echo "crl-n$1"; }        # host side of its veth pair (eth0 inside)
node_addr() { echo "$MULTI_NET.$((10 + $1))"; }

# A pid from a pid file, if that process is alive and is NAME (a stale file names no one).
pid_of() {
  local f=$1 name=$2 p
  [[ -s $f ]] || return 0
  p=$(<"$f")
  [[ $p =~ ^[0-9]+$ ]] || return 0
  [[ $(ps -o stat=,comm= -p "$p" 2>/dev/null) =~ ^[^Z][^[:space:]]*[[:space:]]+$name$ ]] && echo "$p"
  return 0
}
# Live processes NAME whose command line names this cluster's dir (a lost pid file's daemon).
named_pids() {
  local p
  for p in $(ps -eo pid=,stat=,comm= | awk -v n="$1" '$3 == n && $2 !~ /^Z/ { print $1 }'); do
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$MULTI_DIR" && echo "$p"
  done
  return 0
}
ctld_pids() { { pid_of "$MULTI_DIR/slurmctld.pid" slurmctld; named_pids slurmctld; } | sort -u; }
mmunged_pids() { { pid_of "$MULTI_DIR/munge/munged.pid" munged; named_pids munged; } | sort -u; }
# Every live process in a node's network namespace: its slurmd, slurmstepd and job processes.
ns_pids() {
  local p
  for p in $(ip netns pids "$1" 2>/dev/null); do
    [[ $(ps -o stat= -p "$p" 2>/dev/null) =~ ^[^Z] ]] && echo "$p"
  done
  return 0
}
# Namespaces and links of this mode that exist (also those of an earlier, larger or crashed
# cluster).
our_netns() { ip netns list 2>/dev/null | awk '$1 ~ /^corral-n[0-9]+$/ { print $1 }'; }
our_links() {
  ip -o link show 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' |
    grep -E "^($MULTI_BRIDGE|crl-n[0-9]+)$" || true
}
all_ns_pids() { local ns; for ns in $(our_netns); do ns_pids "$ns"; done; }
slurmd_pids() { local i; for i in $(seq 1 "$1"); do pid_of "$MULTI_DIR/slurmd-n$i.pid" slurmd; done; }
no_stepd() { [[ -z $(all_ns_pids | xargs -r ps -o comm= -p 2>/dev/null | grep -x slurmstepd) ]]; }
mmunge_ok() { munge -S "$MUNGE_SOCKET" -n 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }
# `NAME STATE` per node; sinfo bounded as in the single-node mode.
node_states() { timeout 3 sinfo -h -N -p debug -o '%N %T' 2>/dev/null | sort -u; }
# N nodes n1..nN, all in STATES (a regex).
nodes_in() {
  local n=$1 re=$2 i st
  st=$(node_states)
  for i in $(seq 1 "$n"); do grep -Eq "^n$i ($re)\$" <<<"$st" || return 1; done
}
multi_nodes_file() { cat "$MULTI_DIR/nodes" 2>/dev/null || true; }
nothing_of_multi() {
  [[ -z $(ctld_pids) && -z $(mmunged_pids) && -z $(our_netns) && -z $(our_links) ]]
}
ns_empty() { [[ -z $(ns_pids "$1") ]]; }
none_alive() {
  local p
  for p in "$@"; do [[ $(ps -o stat= -p "$p" 2>/dev/null) =~ ^[^Z] ]] && return 1; done
  return 0
}

multi_write_conf() {
  local n=$1 i
  # As the single-node slurm.conf, but: its own ports, dirs, munge socket and job ids, and
  # node addresses on the bridge (the controller finds the nodes by NodeAddr, no DNS).
  cat >"$MULTI_CONF" <<EOF
# Written by scripts/slurm-local.sh start --nodes $n: a controller and $n nodes in network namespaces.
ClusterName=corralmulti
SlurmctldHost=ctl($MULTI_NET.1)
SlurmctldPort=$MULTI_CTLD_PORT
SlurmdPort=$MULTI_SLURMD_PORT
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$MULTI_DIR/ctld
SlurmdSpoolDir=$MULTI_DIR/spool/%n
SlurmctldPidFile=$MULTI_DIR/slurmctld.pid
SlurmdPidFile=$MULTI_DIR/slurmd-%n.pid
SlurmctldLogFile=$MULTI_DIR/log/slurmctld.log
SlurmdLogFile=$MULTI_DIR/log/slurmd-%n.log
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,default_queue_depth=1000,sched_min_interval=100000
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$MULTI_DIR/log/jobcomp.txt
FirstJobId=1000000
# A node whose slurmd stops answering is DOWN after SlurmdTimeout (pinged every third of
# it), and its jobs end NODE_FAIL: seconds here, for the node-failure tests (300 by default).
SlurmdTimeout=${SLURM_LOCAL_SLURMD_TIMEOUT:-3}
MessageTimeout=3
ReturnToService=2
MinJobAge=${SLURM_LOCAL_MIN_JOB_AGE:-10}
KillWait=5
MpiDefault=none
SlurmdParameters=config_overrides
EOF
  for i in $(seq 1 "$n"); do
    echo "NodeName=n$i NodeHostname=n$i NodeAddr=$(node_addr "$i") CPUs=256 Boards=1 SocketsPerBoard=1 CoresPerSocket=256 ThreadsPerCore=1 RealMemory=20000 State=UNKNOWN"
  done >>"$MULTI_CONF"
  cat >>"$MULTI_CONF" <<EOF
PartitionName=debug Nodes=n[1-$n] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO LLN=YES
PartitionName=closed Nodes=n[1-$n] MaxTime=INFINITE State=DOWN
EOF
  printf 'CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n' >"$MULTI_DIR/cgroup.conf"
}

# The bridge (the controller's address) and, per node, a namespace with a veth into it.
multi_network() {
  local n=$1 i ns veth
  if ip -o addr show 2>/dev/null | grep -q " $MULTI_NET\."; then
    die "$MULTI_NET.0/24 is already in use here: $(ip -o addr show | grep " $MULTI_NET\." | head -n1)"
  fi
  # What a container or a kernel without these may refuse: said as such.
  ip link add "$MULTI_BRIDGE" type bridge ||
    die "cannot create a bridge here (kernel bridge support and CAP_NET_ADMIN needed)"
  ip addr add "$MULTI_NET.1/24" dev "$MULTI_BRIDGE"
  ip link set "$MULTI_BRIDGE" up
  for i in $(seq 1 "$n"); do
    ns=$(node_ns "$i"); veth=$(node_veth "$i")
    ip netns add "$ns" || die "cannot create network namespace $ns here"
    ip link add "$veth" type veth peer name eth0 netns "$ns" ||
      die "cannot create a veth pair into $ns here (kernel veth support needed)"
    ip link set "$veth" master "$MULTI_BRIDGE" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
}

# Node I's slurmd, in its network namespace and a UTS namespace named nI.
start_slurmd() {
  setsid nohup nsenter --net="/run/netns/$(node_ns "$1")" unshare --uts \
    sh -c 'hostname "$1" && exec slurmd -D -N "$1" -f "$2"' slurmd "n$1" "$MULTI_CONF" \
    >>"$MULTI_DIR/log/slurmd-n$1.out" 2>&1 </dev/null &
}

# start-node nI: brings back a node whose slurmd was killed (a node that failed): starts its
# slurmd again if none runs, and `scontrol update state=resume` if the controller had set it
# DOWN; returns once the node accepts work.
multi_start_node() {
  local node=$1 i n
  [[ $node =~ ^n([0-9]+)$ ]] || die "start-node wants a node name nI, not '$node'"
  i=${BASH_REMATCH[1]}; n=$(multi_nodes_file)
  [[ -n $n ]] && (( i >= 1 && i <= n )) || die "no node $node in the running multi-node cluster"
  [[ -n $(ctld_pids) ]] || die "the multi-node cluster's controller is not running"
  [[ -n $(pid_of "$MULTI_DIR/slurmd-$node.pid" slurmd) ]] || start_slurmd "$i"
  node_up() { [[ $(node_states | awk -v n="$node" '$1 == n { print $2 }') =~ ^(idle|mixed|allocated)$ ]]; }
  node_answers() { [[ ! $(node_states | awk -v n="$node" '$1 == n { print $2 }') =~ \*$ ]]; }
  # A DOWN node is resumed once its slurmd answers again (resume before that is refused).
  wait_for "$TIMEOUT" node_answers || die "$node's slurmd does not answer the controller"
  node_up || timeout 5 scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
  wait_for "$TIMEOUT" node_up || die "$node not usable within ${TIMEOUT}s: $(node_states | grep "^$node " || true)"
  say "$node up"
}

multi_start() {
  local n=$1 t0 i c
  have_all || die "slurm not installed: run '$0 install' first"
  for c in ip nsenter unshare hostname; do
    command -v "$c" >/dev/null || die "$c not found (iproute2, util-linux, hostname)"
  done
  [[ $n =~ ^[0-9]+$ ]] && (( n >= 1 && n <= MULTI_MAX_NODES )) ||
    die "--nodes wants a number from 1 to $MULTI_MAX_NODES, not '$n'"
  unshare --uts true 2>/dev/null || die "cannot create UTS namespaces here (unshare --uts)"
  if [[ $(multi_nodes_file) == "$n" && -n $(ctld_pids) && -n $(mmunged_pids) ]] &&
    (( $(slurmd_pids "$n" | wc -l) == n )) && nodes_in "$n" 'idle|mixed|allocated'; then
    say "multi-node cluster already running, $n nodes: $(node_states | awk '{ print $1 "=" $2 }' | paste -sd' ')"
    return 0
  fi
  t0=$(now_ms)
  if ! nothing_of_multi; then say "earlier multi-node cluster found, stopping it first"; multi_stop; fi
  # A failed start leaves nothing behind: no namespace, link or daemon.
  trap 'rc=$?; if (( rc != 0 )); then say "start failed, removing what it started"; multi_stop >&2 || true; fi' EXIT

  # 1. The network.
  multi_network "$n"

  # 2. Directories: a clean controller state, a spool dir per node, munge's socket dir.
  mkdir -p "$MULTI_DIR"/{ctld,log,munge,spool}
  find "$MULTI_DIR/ctld" "$MULTI_DIR/spool" -mindepth 1 -delete
  for i in $(seq 1 "$n"); do mkdir -p "$MULTI_DIR/spool/n$i"; done
  : >"$MULTI_DIR/log/jobcomp.txt"
  chown munge:munge "$MULTI_DIR/munge"
  echo "$n" >"$MULTI_DIR/nodes"
  multi_write_conf "$n"

  # 3. A munged of its own (same key), on the controller host `ctl`: the nodes reach its
  #    socket through the shared filesystem, whatever their network namespace.
  setsid unshare --uts sh -c 'hostname ctl && exec runuser -u munge -- /usr/sbin/munged "$@"' munged \
    --socket="$MUNGE_SOCKET" --pid-file="$MULTI_DIR/munge/munged.pid" \
    --log-file="$MULTI_DIR/munge/munged.log" --seed-file="$MULTI_DIR/munge/munged.seed" \
    --origin=127.0.0.1 ||
    die "munged failed to start (see $MULTI_DIR/munge/munged.log)"
  wait_for "$TIMEOUT" mmunge_ok || die "munge -S $MUNGE_SOCKET -n | unmunge never succeeded"

  # 4. The controller, as host ctl (slurmctld runs only on a host SlurmctldHost names), in the
  #    root network namespace, where the bridge gives it its address.
  setsid nohup unshare --uts sh -c 'hostname ctl && exec slurmctld -D -f "$1"' slurmctld "$MULTI_CONF" \
    >>"$MULTI_DIR/log/slurmctld.out" 2>&1 </dev/null &
  # 5. A slurmd per node, in that node's network namespace and hostname (its jobs inherit
  #    both). nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup mounts.
  for i in $(seq 1 "$n"); do start_slurmd "$i"; done

  if ! wait_for "$TIMEOUT" nodes_in "$n" idle; then
    echo "node states: $(node_states | paste -sd' ')" >&2
    tail -n 20 "$MULTI_DIR/log/slurmctld.log" "$MULTI_DIR"/log/slurmd-n*.log >&2 || true
    die "nodes not idle within ${TIMEOUT}s"
  fi
  trap - EXIT
  say "multi-node cluster started in $(( $(now_ms) - t0 )) ms: ctl=$MULTI_NET.1:$MULTI_CTLD_PORT $(for i in $(seq 1 "$n"); do echo -n "n$i=$(node_addr "$i") "; done)(all idle)"
  say "its clients need: export SLURM_CONF=$MULTI_CONF"
}

# kill_wait SECONDS PID...: TERM, wait until they are gone, then KILL what is left.
kill_wait() {
  local secs=$1; shift
  (( $# )) || return 0
  kill -TERM "$@" 2>/dev/null || true
  wait_for "$secs" none_alive "$@" && return 0
  say "still running ${secs}s after TERM, sending KILL: $*"
  kill -KILL "$@" 2>/dev/null || true
  wait_for 5 none_alive "$@" || true
}

multi_stop() {
  local t0 ns p slurmds=() left=() gone=()
  t0=$(now_ms)
  # 1. End every job while the controller answers (as the single-node stop does).
  if [[ -n $(ctld_pids) ]] && mmunge_ok && timeout 5 squeue -h -o %A >/dev/null 2>&1; then
    timeout 5 squeue -h -t running -o %A | xargs -r timeout 5 scancel --signal=KILL --batch 2>/dev/null || true
    timeout 5 squeue -h -o %A | xargs -r timeout 5 scancel 2>/dev/null || true
    wait_for 15 no_stepd || say "job steps still running after scancel"
  fi
  # 2. In each node's namespace, every process but slurmd (job processes, slurmstepd) is
  #    killed; then slurmd, before slurmctld (see the single-node stop).
  for ns in $(our_netns); do
    for p in $(ns_pids "$ns"); do
      gone+=("$p")
      if [[ $(ps -o comm= -p "$p" 2>/dev/null) == slurmd ]]; then
        slurmds+=("$p")
      else
        kill -KILL "$p" 2>/dev/null || true
      fi
    done
  done
  kill_wait "$TIMEOUT" "${slurmds[@]}"
  for ns in $(our_netns); do
    ns_pids "$ns" | xargs -r kill -KILL 2>/dev/null || true
    wait_for 5 ns_empty "$ns" || say "warning: processes left in $ns: $(ns_pids "$ns" | paste -sd' ')"
  done
  # 3. The controller, then munged.
  mapfile -t left < <(ctld_pids); gone+=("${left[@]}"); kill_wait "$TIMEOUT" "${left[@]}"
  mapfile -t left < <(mmunged_pids); gone+=("${left[@]}"); kill_wait "$TIMEOUT" "${left[@]}"
  rm -f "$MULTI_DIR"/*.pid "$MULTI_DIR/munge/munged.pid" "$MULTI_DIR/nodes"
  # 4. The network. Deleting a namespace deletes the veth end in it, and so its peer.
  for ns in $(our_netns); do ip netns del "$ns" || true; done
  for p in $(our_links); do ip link del "$p" 2>/dev/null || true; done
  # The nodes' (empty) cgroups: proctrack/cgroup makes one per node, slurm_nI.
  local cg
  for cg in /sys/fs/cgroup/*/slurm_n*; do
    [[ -d $cg && $cg =~ /slurm_n[0-9]+$ ]] || continue
    find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || say "warning: cgroup $cg not removed"
  done

  if ! nothing_of_multi; then
    echo "left: slurmctld '$(ctld_pids)', munged '$(mmunged_pids)', netns '$(our_netns)', links '$(our_links)'" >&2
    die "multi-node cluster not fully stopped"
  fi
  # As in the single-node stop: PID 1 reaps the daemons' zombies within a second or two.
  gone_from_proc() { local p; for p in "${gone[@]}"; do [[ ! -e /proc/$p ]] || return 1; done; }
  wait_for 10 gone_from_proc || say "warning: not reaped by PID 1 yet: ${gone[*]}"
  say "multi-node cluster stopped in $(( $(now_ms) - t0 )) ms"
}

alive_word() { if [[ -n $1 ]]; then echo "running (pid $1)"; else echo "not running"; fi; }
multi_status() {
  local n=${1:-$(multi_nodes_file)} ok=0 i p states
  if [[ -z $n ]]; then
    echo "multi-node cluster: not started (no $MULTI_DIR/nodes)"; echo "cluster: not usable"; return 1
  fi
  p=$(mmunged_pids | paste -sd' '); echo "munged: $(alive_word "$p")"; [[ -n $p ]] || ok=1
  p=$(ctld_pids | paste -sd' '); echo "slurmctld: $(alive_word "$p") at ctl $MULTI_NET.1:$MULTI_CTLD_PORT"
  [[ -n $p ]] || ok=1
  states=$([[ -n $p ]] && node_states || true)
  for i in $(seq 1 "$n"); do
    p=$(pid_of "$MULTI_DIR/slurmd-n$i.pid" slurmd)
    echo "n$i: slurmd $(alive_word "$p"), netns $(node_ns "$i"), $(node_addr "$i"), state $(awk -v n="n$i" '$1 == n { print $2 }' <<<"$states" | head -n1)"
    [[ -n $p ]] && grep -Eq "^n$i (idle|mixed|allocated)\$" <<<"$states" || ok=1
  done
  (( ok == 0 )) && echo "cluster: usable (SLURM_CONF=$MULTI_CONF)" || echo "cluster: not usable"
  return "$ok"
}

usage() { echo "usage: $0 install|start|stop|status [--nodes N] | start-node nI" >&2; exit 2; }
cmd=${1:-}; (( $# )) && shift
nodes= node_name=
if [[ $cmd == start-node ]]; then
  node_name=${1:-}; (( $# )) && shift
  nodes=auto
fi
if [[ ${1:-} == --nodes ]]; then
  shift
  # start needs the count; stop and status default to the running cluster's.
  nodes=${1:-}; (( $# )) && shift
  [[ -n $nodes || $cmd != start ]] || die "start --nodes wants a node count"
  nodes=${nodes:-auto}
fi
(( $# == 0 )) || usage
if [[ -n $nodes ]]; then
  export SLURM_CONF=$MULTI_CONF
  [[ $nodes == auto ]] && nodes=
  case $cmd in
    install) cmd_install ;;
    start) multi_start "$nodes" ;;
    stop) multi_stop ;;
    status) multi_status "$nodes" ;;
    start-node) multi_start_node "$node_name" ;;
    *) usage ;;
  esac
else
  # The single-node cluster only, whatever SLURM_CONF this shell has.
  export SLURM_CONF=$CONF_DIR/slurm.conf
  case $cmd in
    install|start|stop|status) "cmd_$cmd" ;;
    *) usage ;;
  esac
fi
