#!/usr/bin/env bash
# Stop the test cluster that tests/slurm/start.sh DIR started: cancel its jobs, then stop slurmd,
# slurmctld and munged by the pid files under DIR (never by name: other SLURM or munge daemons
# on this machine are left alone). Safe to run twice or on a DIR whose daemons already stopped.
set -uo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$1
[[ -d $DIR ]] || exit 0

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [[ -s $DIR/slurm.conf ]] && alive "$DIR/slurmctld.pid"; then
    ids=$(SLURM_CONF=$DIR/slurm.conf squeue -h -o %i -t PENDING,RUNNING,SUSPENDED,CONFIGURING 2>/dev/null)
    # shellcheck disable=SC2086
    [[ -n $ids ]] && SLURM_CONF=$DIR/slurm.conf scancel $ids 2>/dev/null
    for _ in $(seq 50); do
        [[ -z $(SLURM_CONF=$DIR/slurm.conf squeue -h -o %i -t RUNNING,COMPLETING 2>/dev/null) ]] && break
        sleep 0.2
    done
fi

status=0
for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    alive "$pidfile" || continue
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        sleep 0.2
    fi
    kill -0 "$pid" 2>/dev/null && { echo "slurm/stop.sh: $pidfile ($pid) still running" >&2; status=1; }
done
exit $status
