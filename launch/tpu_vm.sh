#!/usr/bin/env bash
# Runs one experiment on every host of a Cloud TPU VM slice (single host or pod).
#
#   launch/tpu_vm.sh TPU_NAME ZONE configs/cifar10_resnet18.py gs://BUCKET/runs/r18 [--config.x=y ...]
#
# Every host runs the same command; jax.distributed.initialize() (--jax_distributed)
# finds the coordinator and process ids from the TPU metadata. Data must be prepared
# on each host (or in a GCS tensorflow-datasets directory given as --config.data.data_dir).
set -euo pipefail
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  set -e
  cd ~/hfc_jax || { git clone --depth 1 \"\$HFC_REPO\" ~/hfc_jax && cd ~/hfc_jax; }
  python3 -m pip install -q -e '.[tpu]'
  python3 -m hfc_jax.main --jax_distributed --config=$config --workdir=$workdir $*
"
