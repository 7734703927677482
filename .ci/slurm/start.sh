#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster on this machine, for the opt-in SLURM test
# (tests/workflow/test_slurm.py). Meant for a fresh Debian CI machine where we are root.
#
#   bash .ci/slurm/start.sh [STATE_DIR]      (default: $PANCREAS_MTL_SLURM_DIR or /tmp/pancreas-mtl-slurm)
#   bash .ci/slurm/stop.sh  [STATE_DIR]
#
# * Installs munge, slurmctld, slurmd and slurm-client with apt-get if they are missing.
# * Everything it writes lives in STATE_DIR: slurm.conf, its own munge key and socket, controller state,
#   slurmd spool, logs, and the PIDs of the three daemons it starts (munged, slurmctld, slurmd), which
#   stop.sh kills and nothing else. One thing lies outside: the symlink /etc/slurm/slurm.conf -> STATE_DIR's
#   slurm.conf. It is needed because inside each job the plugin runs a nested `srun` with an environment
#   stripped of SLURM_* variables (SLURM_CONF included), so srun only finds the cluster at the default path.
#   start.sh refuses to replace a real /etc/slurm/slurm.conf; stop.sh removes the link only if it points here.
# * No accounting (no slurmdbd): sacct does not work, so clients must use the plugin's squeue status
#   command (`--slurm-status-command squeue`); MinJobAge is kept at 300 s so squeue still lists finished jobs.
# * One partition, PARTITION (default "ci"), the default one; the node has the machine's real CPUs and memory
#   (from `slurmd -C`); CPUs and memory are consumable (select/cons_tres, CR_Core_Memory); no GPUs (GRES).
# * Waits (bounded) until `sinfo` reports the node idle; on failure prints the daemons' logs and exits 1.
# * Idempotent: if the daemons it recorded are still running it only waits for the node and exits 0.
#
# Prints the environment to use on its last line and writes it to STATE_DIR/env.sh:
#   export SLURM_CONF=STATE_DIR/etc/slurm.conf
set -euo pipefail

STATE_DIR="${1:-${PANCREAS_MTL_SLURM_DIR:-/tmp/pancreas-mtl-slurm}}"
PARTITION="${PANCREAS_MTL_SLURM_PARTITION:-ci}"
CTLD_PORT="${PANCREAS_MTL_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${PANCREAS_MTL_SLURMD_PORT:-6818}"
WAIT_S="${PANCREAS_MTL_SLURM_WAIT_S:-90}"

log() { echo "[slurm start] $*"; }
die() { echo "[slurm start] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and runs slurmd)"
case "$STATE_DIR" in /*) ;; *) STATE_DIR="$(pwd)/$STATE_DIR" ;; esac
[ "$STATE_DIR" != "/" ] || die "refusing to use / as the state folder"

# ---- packages (idempotent) ----------------------------------------------------------------------------
need=()
for bin in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client; do
    command -v "${bin%%:*}" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "${bin%%:*}" >/dev/null 2>&1 \
        || need+=("${bin##*:}")
done
export PATH="$PATH:/usr/sbin:/sbin"
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    # Debian's maintainer scripts try to start the services; there is no init system here, and we start
    # the daemons ourselves below, so an "invoke-rc.d ... denied" message is expected and harmless.
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
fi

ETC="$STATE_DIR/etc"; MUNGE="$STATE_DIR/munge"; PIDS="$STATE_DIR/pids"; LOGS="$STATE_DIR/log"
CONF="$ETC/slurm.conf"

pid_alive() {  # pid_alive NAME: the recorded daemon NAME is running (and really is that program)
    local f="$PIDS/$1.pid" pid
    [ -s "$f" ] || return 1
    pid="$(cat "$f")"
    [ -r "/proc/$pid/cmdline" ] && [ "$(basename "$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -1)")" = "$1" ]
}

node_state() { SLURM_CONF="$CONF" timeout 10 sinfo -h -N -o '%T' 2>/dev/null | head -1 || true; }

dump_logs() {
    for f in "$LOGS"/*.log "$LOGS"/*.out; do  # .out: what a daemon printed before its log file opened
        [ -f "$f" ] || continue
        echo "----- $f (last 40 lines) -----" >&2
        tail -n 40 "$f" >&2
    done
}

wait_idle() {
    local deadline=$((SECONDS + WAIT_S)) state=""
    while [ $SECONDS -lt $deadline ]; do
        for d in munged slurmctld slurmd; do
            pid_alive "$d" || { dump_logs; die "$d (pid $(cat "$PIDS/$d.pid" 2>/dev/null)) exited; logs above"; }
        done
        state="$(node_state)"
        case "$state" in
            idle|mixed|allocated) log "node is $state"; return 0 ;;
            down*|drain*)  # e.g. a previous run left it down: bring it back
                SLURM_CONF="$CONF" scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    SLURM_CONF="$CONF" timeout 10 scontrol show node >&2 || true
    dump_logs
    die "node not idle after ${WAIT_S}s (last state: '${state:-none}'); daemon logs above"
}

NODE="$(hostname -s)"

if pid_alive munged && pid_alive slurmctld && pid_alive slurmd; then
    log "already running (state in $STATE_DIR)"
    wait_idle
    echo "export SLURM_CONF=$CONF"
    exit 0
fi
if pid_alive munged || pid_alive slurmctld || pid_alive slurmd; then
    log "half-started cluster found: stopping it first"
    bash "$(dirname "$0")/stop.sh" "$STATE_DIR"
fi

mkdir -p "$ETC" "$MUNGE" "$PIDS" "$LOGS" "$STATE_DIR/ctld" "$STATE_DIR/spool"
chmod 0755 "$STATE_DIR" "$ETC" "$PIDS" "$LOGS"
chmod 0711 "$MUNGE"; chmod 0700 "$STATE_DIR/ctld" "$STATE_DIR/spool"

# ---- slurm.conf ---------------------------------------------------------------------------------------
# slurmd -C prints this machine's real layout, e.g.
#   NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
node_line="$(slurmd -C | head -1)"
case "$node_line" in NodeName=*) ;; *) die "unexpected 'slurmd -C' output: $node_line" ;; esac

cat >"$CONF" <<EOF
# Written by .ci/slurm/start.sh: a single-node test cluster, no accounting. Do not use in production.
ClusterName=pancreasci
MailProg=/bin/true
SlurmctldHost=${NODE}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${MUNGE}/munge.socket
StateSaveLocation=${STATE_DIR}/ctld
SlurmdSpoolDir=${STATE_DIR}/spool
SlurmctldPidFile=${STATE_DIR}/ctld/slurmctld.pid
SlurmdPidFile=${STATE_DIR}/spool/slurmd.pid
SlurmctldLogFile=${LOGS}/slurmctld.log
SlurmdLogFile=${LOGS}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# no slurmdbd: no accounting storage, no job accounting, no job completion log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# finished jobs stay visible to squeue this long (the plugin's squeue status needs >= 3x its first check delay)
MinJobAge=300
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
KillWait=10
${node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# The default config path (see the header): a link to ours, never over someone else's file.
SYS_CONF=/etc/slurm/slurm.conf
if [ -L "$SYS_CONF" ] || [ ! -e "$SYS_CONF" ]; then
    target="$(readlink "$SYS_CONF" 2>/dev/null || true)"
    if [ -n "$target" ] && [ "$target" != "$CONF" ] && [ -e "$target" ]; then
        die "$SYS_CONF links to $target (another test cluster?); stop it first or remove the link"
    fi
    mkdir -p /etc/slurm
    ln -sfn "$CONF" "$SYS_CONF"
else
    die "$SYS_CONF exists and is not ours: this script is for throw-away CI machines only"
fi

# ---- munge: our own key and socket, so a system munged (if any) is left alone ---------------------------
if [ ! -s "$MUNGE/munge.key" ]; then
    dd if=/dev/urandom of="$MUNGE/munge.key" bs=1 count=1024 status=none
fi
chmod 0400 "$MUNGE/munge.key"
rm -f "$MUNGE/munge.socket" "$MUNGE/munge.socket.lock"

start_daemon() {  # start_daemon NAME CMD...: run CMD in the foreground of its own session, record its PID
    local name="$1" pid; shift
    setsid "$@" </dev/null >>"$LOGS/$name.out" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDS/$name.pid"
    # The PID runs bash, then setsid, before it execs the daemon: until then pid_alive (which checks the
    # program's name) says no, and the startup loops below would take a daemon that is still starting for
    # one that died (seen on a loaded CI machine: "slurmctld does not answer" one second after its start).
    for _ in $(seq 100); do
        pid_alive "$name" && { log "started $name (pid $pid)"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    dump_logs
    die "$name (pid $pid) did not start; logs above"
}

start_daemon munged munged --foreground --force --key-file="$MUNGE/munge.key" --socket="$MUNGE/munge.socket" \
    --pid-file="$MUNGE/munged.pid" --log-file="$LOGS/munged.log" --seed-file="$MUNGE/munged.seed"
for _ in $(seq 50); do [ -S "$MUNGE/munge.socket" ] && break; pid_alive munged || break; sleep 0.2; done
[ -S "$MUNGE/munge.socket" ] || { dump_logs; die "munged did not create its socket"; }

# -c: start with a clean job state (no jobs of an earlier run); -D: foreground (we keep its PID)
start_daemon slurmctld slurmctld -D -c -f "$CONF"
for _ in $(seq 100); do
    SLURM_CONF="$CONF" timeout 5 scontrol ping 2>/dev/null | grep -q "is UP" && break
    pid_alive slurmctld || break
    sleep 0.3
done
SLURM_CONF="$CONF" timeout 5 scontrol ping 2>/dev/null | grep -q "is UP" || { dump_logs; die "slurmctld does not answer"; }

start_daemon slurmd slurmd -D -f "$CONF"
wait_idle

echo "export SLURM_CONF=$CONF" >"$STATE_DIR/env.sh"
log "cluster up: partition '$PARTITION' on node '$NODE'; state in $STATE_DIR"
echo "export SLURM_CONF=$CONF"
