#!/usr/bin/env bash
# Runs one experiment on all GPUs of one host (data parallel over a 1-D mesh).
#
#   launch/gpu_host.sh configs/cifar10_resnet18.py /runs/r18 [--config.x=y ...]
#
# For several hosts, start it on each host with
#   --jax_distributed --coordinator_address=HOST0:1234 --num_processes=N --process_id=I
# (or just --jax_distributed under SLURM / Open MPI, which JAX detects).
set -euo pipefail
config=$1; workdir=$2; shift 2
cd "$(dirname "$0")/.."
python -m pip install -q -e '.[cuda]'
# Let XLA take GPU memory as needed rather than 75% up front (kinder to other jobs).
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec python -m hfc_jax.main --config="$config" --workdir="$workdir" "$@"
