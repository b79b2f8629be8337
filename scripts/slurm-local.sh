#!/usr/bin/env bash
# slurm-local.sh — a single-node Slurm cluster on this machine, for corral's Slurm placement tests.
#
#   scripts/slurm-local.sh install   # apt-get slurm-wlm + munge, only if missing (idempotent)
#   scripts/slurm-local.sh start     # munged + slurmctld + slurmd; returns once the node is idle
#   scripts/slurm-local.sh stop      # kills every engine daemon (and slurmstepd), waits until gone
#   scripts/slurm-local.sh status    # exit 0 iff the cluster is usable
#
# Verified with Debian 12 packages (Slurm 22.05), as root, without systemd as PID 1.
# Env: SLURM_LOCAL_TIMEOUT (seconds for start/stop polls, default 30);
#      SLURM_LOCAL_MIN_JOB_AGE (slurm.conf MinJobAge, default 10: how long finished jobs stay
#      visible to squeue/scontrol before only `sacct -c` (jobcomp file) knows them; short,
#      so the tests see both).
# Partitions: `debug` (default, up) and `closed` (down: a job sent there stays PENDING,
# reason PartitionDown — how the tests get a queued job).
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

# Live (non-zombie) pids of an exact process name. pgrep -x also matches zombies, and PID 1
# on this machine reaps orphans only every ~1-2 s, so a dead daemon can linger as <defunct>.
live_pids() { ps -eo pid=,stat=,comm= | awk -v n="$1" '$3 == n && $2 !~ /^Z/ { print $1 }'; }
running() { [[ -n $(live_pids "$1") ]]; }
none_running() { local d; for d in "$@"; do ! running "$d" || return 1; done; }
zombies() { ps -eo pid=,stat=,comm= | awk '$2 ~ /^Z/ && $3 ~ /^(slurmctld|slurmd|slurmstepd|munged)$/'; }
no_zombies() { [[ -z $(zombies) ]]; }
# Pids of job processes still in Slurm's cgroups (proctrack/cgroup puts every job there).
job_pids() { cat /sys/fs/cgroup/*/slurm*/uid_*/job_*/step_*/cgroup.procs 2>/dev/null | sort -u; }
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

case ${1:-} in
  install|start|stop|status) "cmd_$1" ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
