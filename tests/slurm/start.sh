#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and for trying the slurm profile:
# munged, slurmctld and slurmd with two fake GPUs, every file (config, key, sockets, state,
# logs, pid files) under DIR, on free ports, so it runs beside any other munge/SLURM here.
#
#   eval "$(tests/slurm/start.sh DIR)"   # sets SLURM_CONF=DIR/slurm.conf, PATH=DIR/bin:$PATH
#   sbatch ...; squeue; snakemake --profile profiles/slurm ...
#   tests/slurm/stop.sh DIR      # cancels its jobs, stops its daemons (by their pid files)
#
# Needs root (slurmd starts jobs as their user) and Debian's slurm-wlm and munge; installs them
# with apt-get when they are missing. Idempotent: run again on the same DIR, it starts only the
# daemons that are not running. Exit status 0 once the node is idle and takes jobs.
#
# The fake GPUs: gres.conf declares two `gpu`s on the node with File=/dev/null and /dev/zero
# (without a File the node is INVAL), so a job asking for --gpus=1 gets CUDA_VISIBLE_DEVICES=0 and
# one asking for --gpus=2 gets 0,1; torch still sees no CUDA device, which is what a CPU test wants.
set -euo pipefail

die() { echo "slurm/start.sh: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 DIR"
[[ $(id -u) -eq 0 ]] || die "needs root (slurmd runs jobs as their user); running as $(id -un)"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || die "slurmctld/munged missing and no apt-get to install slurm-wlm and munge"
    echo "slurm/start.sh: installing slurm-wlm and munge (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >&2 || { apt-get update -q >&2 && apt-get install -y -q slurm-wlm munge >&2; } ||
        die "apt-get install slurm-wlm munge failed"
fi

mkdir -p "$1"
DIR=$(cd "$1" && pwd)
# munged insists that every directory above its socket is searchable by all.
chmod 755 "$DIR"
mkdir -p "$DIR"/{munge,state,spool,log}
chmod 755 "$DIR/munge"
chmod 700 "$DIR/state" "$DIR/spool"

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- munge: our own daemon, key and socket ----------------------------------------------------
SOCKET=$DIR/munge/munge.socket
if [[ ! -s $DIR/munge/munge.key ]]; then
    (umask 077 && head -c 1024 /dev/urandom >"$DIR/munge/munge.key")
fi
if ! alive "$DIR/munge/munged.pid"; then
    rm -f "$SOCKET" "$SOCKET.lock"
    munged --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" ||
        die "munged did not start; see $DIR/log/munged.log"
fi
for _ in $(seq 50); do [[ -S $SOCKET ]] && break; sleep 0.1; done
munge -n -S "$SOCKET" | unmunge -S "$SOCKET" >/dev/null || die "munge round trip failed; see $DIR/log/munged.log"

# --- slurm.conf and gres.conf (written once per DIR: the ports stay those of its daemons) -----
HOST=$(hostname -s)
CONF=$DIR/slurm.conf
if [[ ! -s $CONF ]]; then
    CPUS=$(nproc)
    MEM=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
    cat >"$CONF" <<EOF
# Written by tests/slurm/start.sh: a one-node test cluster, everything under $DIR.
ClusterName=sftrltest
SlurmctldHost=$HOST
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# No accounting database: job state comes from slurmctld, which keeps finished jobs this long
# (seconds), so squeue/scontrol still show them to Snakemake and to the test.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=1
GresTypes=gpu
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM Gres=gpu:2 State=UNKNOWN
PartitionName=test Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$DIR/gres.conf" <<EOF
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/null
NodeName=$HOST Name=gpu File=/dev/zero
EOF
fi
export SLURM_CONF=$CONF

# The slurm executor's job step removes SLURM_CONF (every SLURM_* variable but the job's
# identity) before its nested `srun`, which then looks for /etc/slurm/slurm.conf as on a real
# cluster. This srun, first on PATH, puts this cluster's config back and runs the real srun.
mkdir -p "$DIR/bin"
REAL_SRUN=$(PATH=$(tr ':' '\n' <<<"$PATH" | grep -vxF "$DIR/bin" | paste -sd:) && command -v srun) ||
    die "srun not found"
cat >"$DIR/bin/srun" <<EOF
#!/bin/sh
SLURM_CONF='$CONF' exec '$REAL_SRUN' "\$@"
EOF
chmod 755 "$DIR/bin/srun"

if ! alive "$DIR/slurmctld.pid"; then
    slurmctld -f "$CONF" || die "slurmctld did not start; see $DIR/log/slurmctld.log"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld does not answer; see $DIR/log/slurmctld.log"

if ! alive "$DIR/slurmd.pid"; then
    slurmd -f "$CONF" || die "slurmd did not start; see $DIR/log/slurmd.log"
fi

state=""
for _ in $(seq 150); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
    case $state in
        idle* | mixed* | allocated*) break ;;
        down* | drain*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
done
case $state in
    idle* | mixed* | allocated*) ;;
    *) die "node $HOST is '${state:-unknown}', not idle; see $DIR/log/slurmd.log and slurmctld.log" ;;
esac
echo "export SLURM_CONF=$CONF PATH=$DIR/bin:\$PATH"
