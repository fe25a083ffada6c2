#!/bin/bash
# Issue 24 §2's learned cranial residual, GPU recipe (1 mm crops of 128³), as one time-boxed run on a
# lent GPU machine. The GPU machine needs neither SimpleITK nor the SkullFix files: the sample pools
# are made on the CPU machine first (the rim fit runs there, about 8 s per sample on one core),
#     skullvae train-residual --data ../shared/data/skullfix --train-ids 000-055 --val-ids 056-063 \
#         --extra ../shared/data/skullfix_test --spacing 1 --crop 128,128,128 --pool-only --out .device/res
# and .device/ also holds the MONAI wheel (`pip download --no-deps monai==1.6.1 -d .device`).
# On the device, from the checkout's root (send .device/ along: `carry [".device"]`):
#     MIN=8 bash benchmarks/gpu_residual.sh
# $OUT/res gets residual.safetensors (best validation Dice, fp16), training_log.csv and
# checkpoints/residual.pt (a run stopped by its time budget or a signal continues with --resume).
# Dry run on a CPU (pools made with the same --spacing/--crop as EXTRA):
#     OUT=/tmp/o SKIPPIP=1 DEV=cpu MIN=0.2 POOLS="p.npz" VALPOOLS="v.npz" \
#         EXTRA="--spacing 6 --crop 24,24,24 --channels 4,8" bash benchmarks/gpu_residual.sh
# shellcheck source=benchmarks/gpu_setup.sh
. "$(dirname "$0")/gpu_setup.sh"
# shellcheck disable=SC2086  # POOLS, VALPOOLS and EXTRA hold several words
python3 -m SkullVAELib train-residual --out "$OUT/res" \
  --pools ${POOLS:-.device/res/pool-train.npz .device/res/pool-extra.npz} \
  --val-pools ${VALPOOLS:-.device/res/pool-val.npz} --device "${DEV:-cuda}" --minutes "${MIN:-8}" \
  --batch "${BATCH:-4}" --val-every "${VE:-100}" --progress none ${EXTRA:---spacing 1 --crop 128,128,128 --channels 16,32,64,128,256}
echo "rc=$? total $(($(date +%s) - T0)) s"
