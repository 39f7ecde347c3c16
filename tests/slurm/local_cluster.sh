#!/bin/bash
# A real slurm cluster on localhost for tests and CI (Debian's slurm 22.05 + munge). Run as root.
#
#   NNODES=2 BASE=/tmp/distlm-slurm tests/slurm/local_cluster.sh up     # prints SLURM_CONF=...
#   BASE=/tmp/distlm-slurm tests/slurm/local_cluster.sh down
#
# NNODES>1 emulates N nodes with one slurmd per node on this host (`slurmd -N nodeI`, own port,
# NodeAddr=127.0.0.1), so a --nodes=2 job runs a real two-node torchrun rendezvous over loopback.
# node1/node2 do not resolve: jobs take the address from `scontrol show node` (NodeAddr).
# munge gets its own key and socket under BASE, so a system munged is left alone.
set -euo pipefail
CMD=${1:-up}
BASE=${BASE:-/tmp/distlm-slurm}
NNODES=${NNODES:-1}
export SLURM_CONF=$BASE/slurm.conf

down() {
  for f in "$BASE"/slurmd-*.pid "$BASE"/slurmctld.pid "$BASE"/munge/munged.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$BASE"/slurmd-*.pid "$BASE"/slurmctld.pid "$BASE"/munge/munged.pid; do
    for _ in $(seq 1 50); do
      [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null || break
      sleep 0.1
    done
    rm -f "$f"
  done
}

if [ "$CMD" = down ]; then down; exit 0; fi
[ "$CMD" = up ] || { echo "usage: $0 up|down" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "local_cluster: needs root (slurmd runs jobs as root)" >&2; exit 3; }
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
   || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y slurmctld slurmd slurm-client munge \
    >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y slurmctld slurmd slurm-client munge >/dev/null; } \
    || { echo "local_cluster: apt-get install of slurm/munge failed" >&2; exit 4; }
fi
down  # a previous cluster under the same BASE
rm -rf "$BASE/state" "$BASE/spool"
mkdir -p "$BASE/munge" "$BASE/state" "$BASE/spool" "$BASE/log"
chmod 700 "$BASE/munge"

# munge: private key + socket; root needs --force
/usr/sbin/mungekey --create --force --keyfile="$BASE/munge/munge.key"
/usr/sbin/munged --force --key-file="$BASE/munge/munge.key" --socket="$BASE/munge/munge.sock" \
  --pid-file="$BASE/munge/munged.pid" --log-file="$BASE/munge/munged.log" \
  --seed-file="$BASE/munge/seed"
munge -S "$BASE/munge/munge.sock" -n | unmunge -S "$BASE/munge/munge.sock" >/dev/null

H=$(hostname -s); NCPU=$(nproc)
MEM=$(( $(awk '/^MemTotal:/{print int($2 / 1024)}' /proc/meminfo) * 8 / 10 / NNODES ))  # MiB
cat > "$SLURM_CONF" <<EOF
ClusterName=distlmci
SlurmctldHost=$H
SlurmctldPort=${SLURMCTLD_PORT:-7817}
SlurmdPort=${SLURMD_PORT:-7818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$BASE/munge/munge.sock
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldPidFile=$BASE/slurmctld.pid
SlurmdPidFile=$BASE/slurmd-%n.pid
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
EOF
if [ "$NNODES" = 1 ]; then
  echo "NodeName=$H CPUs=$NCPU RealMemory=$MEM State=UNKNOWN" >> "$SLURM_CONF"
else
  for i in $(seq 1 "$NNODES"); do
    echo "NodeName=node$i NodeHostname=$H NodeAddr=127.0.0.1 Port=$(( ${SLURMD_PORT:-7818} + 22 + i ))" \
         "CPUs=$NCPU RealMemory=$MEM State=UNKNOWN" >> "$SLURM_CONF"
  done
fi
echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >> "$SLURM_CONF"

slurmctld
if [ "$NNODES" = 1 ]; then slurmd; else for i in $(seq 1 "$NNODES"); do slurmd -N "node$i"; done; fi
for _ in $(seq 1 60); do
  [ "$(sinfo -h -o %T 2>/dev/null | sort -u)" = idle ] && break
  sleep 0.5
done
if [ "$(sinfo -h -o %T 2>/dev/null | sort -u)" != idle ]; then
  echo "local_cluster: nodes did not become idle:" >&2; sinfo >&2 || true
  tail -n 20 "$BASE"/log/*.log >&2 || true
  down; exit 5
fi
echo "SLURM_CONF=$SLURM_CONF"
