#!/usr/bin/env bash
# Stop the test cluster that .ci/slurm/start.sh started (same STATE_DIR argument / default).
#
#   bash .ci/slurm/stop.sh [STATE_DIR]      (default: $PANCREAS_MTL_SLURM_DIR or /tmp/pancreas-mtl-slurm)
#
# * Cancels the jobs still queued or running in that cluster (through its own slurmctld), so no job
#   processes outlive it.
# * Kills exactly the daemons start.sh recorded in STATE_DIR/pids (slurmd, slurmctld, munged), by PID, after
#   checking that each PID still is that program; SIGTERM, then SIGKILL after a bounded wait.
# * Removes the /etc/slurm/slurm.conf link if (and only if) it points into STATE_DIR.
# * Keeps STATE_DIR (logs) for inspection; safe to call twice, or when nothing was started.
set -uo pipefail

STATE_DIR="${1:-${PANCREAS_MTL_SLURM_DIR:-/tmp/pancreas-mtl-slurm}}"
case "$STATE_DIR" in /*) ;; *) STATE_DIR="$(pwd)/$STATE_DIR" ;; esac
PIDS="$STATE_DIR/pids"
CONF="$STATE_DIR/etc/slurm.conf"
export PATH="$PATH:/usr/sbin:/sbin"

log() { echo "[slurm stop] $*"; }

recorded_pid() {  # recorded_pid NAME: print the PID if it is alive and really is NAME
    local f="$PIDS/$1.pid" pid
    [ -s "$f" ] || return 1
    pid="$(cat "$f")"
    [ -r "/proc/$pid/cmdline" ] && [ "$(basename "$(tr '\0' '\n' <"/proc/$pid/cmdline" | head -1)")" = "$1" ] && echo "$pid"
}

# Jobs first, while the controller still runs (they are this private cluster's jobs only).
if recorded_pid slurmctld >/dev/null && [ -f "$CONF" ]; then
    jobs="$(SLURM_CONF="$CONF" timeout 10 squeue -h -o '%i' 2>/dev/null | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
        log "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        SLURM_CONF="$CONF" timeout 10 scancel $jobs 2>/dev/null || true
        for _ in $(seq 20); do
            [ -z "$(SLURM_CONF="$CONF" timeout 5 squeue -h -t RUNNING,COMPLETING -o '%i' 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

for name in slurmd slurmctld munged; do
    pid="$(recorded_pid "$name")" || { rm -f "$PIDS/$name.pid"; continue; }
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDS/$name.pid"
done

if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    rm -f /etc/slurm/slurm.conf
fi
log "stopped (logs kept in $STATE_DIR/log)"
