#!/usr/bin/env bash
# Stop the test cluster that tests/slurm/cluster_up.sh started: cancel its jobs, then stop
# slurmd, slurmctld and munged (only those it started) by their PID files and wait for them
# to exit. Safe to run twice, and when nothing was started.
set -uo pipefail

DIR="${SORTKD_SLURM_DIR:-/var/tmp/sortkd-slurm}"
STATE="$DIR/daemons"

say() { echo "cluster_down: $*" >&2; }

if [[ ! -f "$STATE" ]]; then
    say "nothing to stop (no $STATE)"
    exit 0
fi

# Jobs first, while slurmctld and slurmd are still there to kill their processes.
ctld_pidfile="$(awk '$1 == "slurmctld" {print $2}' "$STATE")"
if [[ -n "$ctld_pidfile" && -s "$ctld_pidfile" ]] && kill -0 "$(cat "$ctld_pidfile")" 2>/dev/null; then
    if [[ -n "$(squeue -h -o %i 2>/dev/null)" ]]; then
        say "cancelling the jobs still on the test cluster"
        scancel --quiet --user="$(id -un)" 2>/dev/null || true
        for ((t = 0; t < 150; t++)); do
            [[ -z "$(squeue -h -t all -o '%T' 2>/dev/null | grep -Ev '^(CANCELLED|COMPLETED|FAILED|TIMEOUT|OUT_OF_MEMORY|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE)$')" ]] && break
            sleep 0.1
        done
    fi
fi

rc=0
# Stop in the reverse order of start: slurmd, slurmctld, munged.
tac "$STATE" | while read -r name pidfile; do
    if [[ ! -s "$pidfile" ]]; then
        say "$name: no PID file $pidfile (already stopped)"
        continue
    fi
    pid="$(cat "$pidfile")"
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    if [[ -z "$comm" ]]; then
        say "$name: pid $pid is gone (already stopped)"
        rm -f "$pidfile"
        continue
    fi
    if [[ "$comm" != "$name" ]]; then
        say "$name: pid $pid is now '$comm', not $name; leaving it alone"
        rm -f "$pidfile"
        continue
    fi
    kill -TERM "$pid" 2>/dev/null
    for ((t = 0; t < 150; t++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
        sleep 0.5
    fi
    if kill -0 "$pid" 2>/dev/null; then
        say "ERROR: $name (pid $pid) is still running"
        exit 1
    fi
    rm -f "$pidfile"
    say "stopped $name (pid $pid)"
done || rc=1

if [[ $rc == 0 ]]; then
    # Remove the configuration too: with a slurm.conf that names a controller which is not
    # running, every scontrol call waits ~10 s -- and the Snakemake SLURM plugin runs
    # `scontrol show config` whenever it is imported, i.e. on every snakemake command.
    for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
        if [[ -f "$f" ]] && grep -q "written by sortkd tests/slurm/cluster_up.sh" "$f"; then rm -f "$f"; fi
    done
    rm -f "$STATE"
    say "down"
fi
exit $rc
