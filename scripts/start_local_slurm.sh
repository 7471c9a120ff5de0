#!/usr/bin/env bash
# A single-node SLURM on this machine, for tests/test_slurm.py: munged, slurmctld and slurmd on localhost,
# with a config written here (proctrack/linuxproc, task/none, no cgroups, no accounting database).
#   sudo apt-get install -y slurm-wlm munge          # Debian / Ubuntu packages (once)
#   scripts/start_local_slurm.sh DIR                 # writes DIR/slurm.conf, starts the daemons
#   export SLURM_CONF=DIR/slurm.conf                 # then sbatch / squeue / scontrol use it
#   scripts/start_local_slurm.sh DIR stop            # stops the daemons it started
# SLURMCTLD_PORT / SLURMD_PORT choose the ports (default 16817 / 16818).
# Needs root (slurmd runs jobs as their user) or a user allowed to run the daemons.
set -euo pipefail
dir="$(mkdir -p "${1:?usage: start_local_slurm.sh DIR [stop]}" && cd "$1" && pwd)"
export SLURM_CONF="$dir/slurm.conf"
if [ "${2:-}" = stop ]; then
    # end the jobs through the scheduler first: a job step whose slurmd is gone stays behind as an orphan
    scancel -u "$(id -un)" 2>/dev/null || true
    for _ in $(seq 30); do
        [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
        sleep 1
    done
    for pid in slurmd slurmctld munged; do
        [ -f "$dir/$pid.pid" ] && kill "$(cat "$dir/$pid.pid")" 2>/dev/null || true
    done
    exit 0
fi
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
cat > "$SLURM_CONF" <<CONF
ClusterName=speechfuse-test
SlurmctldHost=localhost
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
KillWait=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
# munge: its own key and socket in DIR, so nothing system-wide is touched
[ -f "$dir/munge/munge.key" ] || dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 700 "$dir/munge"; chmod 400 "$dir/munge/munge.key"
munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" --pid-file="$dir/munged.pid" \
    --log-file="$dir/munged.log" --seed-file="$dir/munge/munge.seed" --force
slurmctld -c -f "$SLURM_CONF"
slurmd -N localhost -f "$SLURM_CONF"
for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -q '^idle'; then echo "slurm up: export SLURM_CONF=$SLURM_CONF"; exit 0; fi
    sleep 1
done
echo "slurm did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
exit 1
