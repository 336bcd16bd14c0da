#!/usr/bin/env bash
# Bring up a real single-node Slurm cluster on this machine (munged, slurmctld, slurmd) for
# sortkd's SLURM tests. Run as root. Idempotent: a cluster it already started and that is
# healthy is left as it is.
#
#   tests/slurm/cluster_up.sh          # up (installs the Debian packages if missing)
#   tests/slurm/cluster_down.sh        # down (stops only what cluster_up started)
#
# Exit codes: 0 up; 77 Slurm cannot be had here (not root, no apt-get, packages not
# installable) -- callers skip; anything else is a real failure.
#
# Environment:
#   SORTKD_SLURM_DIR    state, spool, logs, PID files   (default /var/tmp/sortkd-slurm)
#   SORTKD_SLURM_GPUS   number of fake GPUs on the node (default 2)
#   SORTKD_SLURM_FORCE  1: overwrite an /etc/slurm/slurm.conf that cluster_up did not write
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${SORTKD_SLURM_DIR:-/var/tmp/sortkd-slurm}"
NGPU="${SORTKD_SLURM_GPUS:-2}"
ETC=/etc/slurm
MARKER="written by sortkd tests/slurm/cluster_up.sh"
STATE="$DIR/daemons"          # one line per daemon we started: <name> <pidfile>
PACKAGES=(munge slurmctld slurmd slurm-client)

say() { echo "cluster_up: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
unavailable() {
    echo "cluster_up: SLURM UNAVAILABLE: $*" >&2
    exit 77
}

# --- 0. already up? ------------------------------------------------------------------------
pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n1 | tr -d '*~#!%$@^-'; }

if [[ -f "$STATE" ]]; then
    healthy=1
    while read -r name pidfile; do
        pid_alive "$pidfile" || { healthy=0; say "$name (pid file $pidfile) is not running"; }
    done <"$STATE"
    st="$(node_state || true)"
    case "$st" in idle|mix|alloc|comp) ;; *) healthy=0 ;; esac
    if [[ $healthy == 1 ]]; then
        say "already up (node state: $st); nothing to do"
        exit 0
    fi
    say "a previous cluster is half up; tearing it down first"
    "$HERE/cluster_down.sh"
fi

# --- 1. packages ---------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || unavailable "cluster_up.sh must run as root (it installs packages and starts daemons)"

have_all_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
    done
}

if ! have_all_packages; then
    command -v apt-get >/dev/null || unavailable "no apt-get on this machine to install ${PACKAGES[*]}"
    t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt_install() {
        apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends "${PACKAGES[@]}" \
            >"$DIR/apt.log" 2>&1
    }
    mkdir -p "$DIR"
    if ! apt_install; then
        say "apt-get install failed; running apt-get update and trying again"
        apt-get update -q -o DPkg::Lock::Timeout=300 >>"$DIR/apt.log" 2>&1 || true
        apt_install || { tail -n 20 "$DIR/apt.log" >&2; unavailable "apt-get could not install ${PACKAGES[*]} (log: $DIR/apt.log)"; }
    fi
    say "installed ${PACKAGES[*]} in $((SECONDS - t0)) s"
fi
for b in munged munge unmunge slurmctld slurmd sinfo sbatch squeue scontrol scancel; do
    command -v "$b" >/dev/null || die "$b not found after installing ${PACKAGES[*]}"
done

# --- 2. configuration ----------------------------------------------------------------------
if [[ -e "$ETC/slurm.conf" ]] && ! grep -q "$MARKER" "$ETC/slurm.conf" && [[ "${SORTKD_SLURM_FORCE:-0}" != 1 ]]; then
    die "$ETC/slurm.conf exists and was not written by cluster_up.sh; refusing to overwrite it (SORTKD_SLURM_FORCE=1 to override)"
fi
[[ "$NGPU" =~ ^[0-9]+$ && "$NGPU" -ge 1 ]] || die "SORTKD_SLURM_GPUS must be a positive integer, got '$NGPU'"
for ((i = 0; i < NGPU; i++)); do
    [[ -c /dev/tty$i ]] || die "/dev/tty$i (fake GPU $i) is not a character device; lower SORTKD_SLURM_GPUS"
done
if ((NGPU == 1)); then gpufiles=/dev/tty0; else gpufiles="/dev/tty[0-$((NGPU - 1))]"; fi

# A fresh StateSaveLocation every time: stale state (e.g. another ClusterName) stops slurmctld.
rm -rf "$DIR/state" "$DIR/spool" "$DIR/run"
mkdir -p "$DIR/state" "$DIR/spool" "$DIR/run" "$DIR/log" "$ETC"
: >"$DIR/log/slurmctld.log"
: >"$DIR/log/slurmd.log"

nodeline="$(slurmd -C | head -n1)"
[[ "$nodeline" == NodeName=* ]] || die "unexpected 'slurmd -C' output: $nodeline"
nodename="${nodeline#NodeName=}"
nodename="${nodename%% *}"
cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$nodeline")"
mem="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$nodeline")"
[[ -n "$cpus" && -n "$mem" ]] || die "cannot read CPUs/RealMemory from: $nodeline"
defmem=$((mem / cpus))
# One core per logical CPU: on a box whose 2 CPUs are the 2 threads of one core, the hardware
# line (ThreadsPerCore=2) with CR_Core would give each 1-CPU job the whole core, so Slurm would
# run one job at a time and the tests of concurrent GPU jobs would see none. slurm.conf sets
# SlurmdParameters=config_overrides so that slurmd accepts this flat layout.
nodeline="NodeName=$nodename CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem"

fill() {
    sed -e "s|@MARKER@|$MARKER|" -e "s|@DIR@|$DIR|g" -e "s|@DEFMEM@|$defmem|g" \
        -e "s|@NODELINE@|$nodeline|" -e "s|@NGPU@|$NGPU|g" -e "s|@NODENAME@|$nodename|g" \
        -e "s|@GPUFILES@|$gpufiles|g" "$1"
}
fill "$HERE/conf/slurm.conf.in" >"$ETC/slurm.conf.tmp" && mv "$ETC/slurm.conf.tmp" "$ETC/slurm.conf"
fill "$HERE/conf/gres.conf.in" >"$ETC/gres.conf.tmp" && mv "$ETC/gres.conf.tmp" "$ETC/gres.conf"
say "wrote $ETC/slurm.conf and $ETC/gres.conf (node $nodename: $cpus CPUs, ${mem} MB, $NGPU fake GPUs)"

: >"$STATE"
record() { echo "$1 $2" >>"$STATE"; }

wait_for() {  # wait_for <seconds> <what> <command...>
    local limit=$1 what=$2 t
    shift 2
    for ((t = 0; t < limit * 10; t++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    say "timed out after ${limit} s waiting for $what"
    return 1
}

# --- 3. munged -----------------------------------------------------------------------------
munge_ok() { munge -n | unmunge; }
if munge_ok >/dev/null 2>&1; then
    say "munged already running (not started by us; left alone)"
else
    [[ -s /etc/munge/munge.key ]] || {
        if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key; else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
    }
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid \
        || die "munged failed to start (see /var/log/munge/munged.log)"
    record munged /run/munge/munged.pid
    wait_for 10 "munged" munge_ok || die "munge credentials do not verify"
fi

# --- 4. slurmctld, slurmd ------------------------------------------------------------------
logtail() { say "last lines of $1:"; tail -n 25 "$1" >&2 || true; }

slurmctld || { logtail "$DIR/log/slurmctld.log"; die "slurmctld failed to start"; }
wait_for 10 "slurmctld.pid" test -s "$DIR/run/slurmctld.pid" || { logtail "$DIR/log/slurmctld.log"; die "slurmctld did not write its PID file"; }
record slurmctld "$DIR/run/slurmctld.pid"
wait_for 20 "slurmctld to answer" scontrol ping || { logtail "$DIR/log/slurmctld.log"; die "slurmctld does not answer"; }

slurmd -N "$nodename" || { logtail "$DIR/log/slurmd.log"; die "slurmd failed to start"; }
wait_for 10 "slurmd.pid" test -s "$DIR/run/slurmd.pid" || { logtail "$DIR/log/slurmd.log"; die "slurmd did not write its PID file"; }
record slurmd "$DIR/run/slurmd.pid"

# --- 5. wait for the node ------------------------------------------------------------------
node_idle() { [[ "$(node_state)" == idle ]]; }
if ! wait_for 30 "node $nodename to become idle" node_idle; then
    sinfo -N -l >&2 || true
    scontrol show node "$nodename" >&2 || true
    logtail "$DIR/log/slurmctld.log"
    logtail "$DIR/log/slurmd.log"
    die "node $nodename is not idle (state: $(node_state || echo '?'))"
fi
scontrol show node "$nodename" | grep -q "Gres=gpu:$NGPU" || die "node $nodename does not offer gpu:$NGPU"
say "up: node $nodename idle with $cpus CPUs and $NGPU fake GPUs; daemons in $STATE; logs in $DIR/log"
