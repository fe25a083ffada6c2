#!/bin/bash
# Issue 24 §2's learned cranial residual, GPU recipe (1 mm crops of 128³), as one time-boxed run on a
# lent GPU machine: the sample pools are made THERE, from the SkullFix kit (../shared/device: skulls at
# half resolution, complete and defective, no implants), by --jobs worker processes on its cores, then
# the U-Net trains on the GPU with every crop warped afresh (--augment). Pools of 1 mm crops are
# hundreds of MB: they cannot travel with the checkout (64 MiB), so they are not made here.
# Prepare .device/ on the CPU machine (git-ignored; `carry [".device"]`):
#     mkdir -p .device && cp ../shared/device/* .device/
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 -d .device SimpleITK
#     python3 -m pip download --no-deps monai==1.6.1 -d .device
# On the device, from the checkout's root:
#     MIN=5 bash benchmarks/gpu_residual.sh
# $OUT/res gets residual.safetensors (best validation Dice, fp16), training_log.csv and
# checkpoints/residual.pt (a run stopped by its time budget or a signal continues with --resume);
# score it on the CPU machine at the original resolution (`skullvae evaluate --implants residual+rimfit`).
# Validation here is drawn defects on the validation skulls (the kit has no implants).
# Dry run on a CPU, from the kit in .device/ (checked: unpack, pools of 2 + 1 skulls, training: 25 s on
# 2 cores; DATA=<a SkullFix-layout folder> skips the kit; POOLS="a.npz" VALPOOLS="v.npz" skip the pools):
#     OUT=/tmp/o SKIPPIP=1 DEV=cpu MIN=0.1 TRAIN=000-001 VAL=056 JOBS=2 DRAWS=1 \
#         EXTRA="--spacing 6 --crop 24,24,24 --channels 4,8" bash benchmarks/gpu_residual.sh
# shellcheck source=benchmarks/gpu_setup.sh
. "$(dirname "$0")/gpu_setup.sh"
GRID=${EXTRA:---spacing 1 --crop 128,128,128 --channels 16,32,64,128,256}
POOLDIR=${POOLDIR:-/tmp/residual-pools}
if [ -z "${POOLS:-}" ]; then
  if [ -z "${DATA:-}" ]; then
    DATA=/tmp/skullfix-half
    python3 .device/unpack.py .device/skullfix_half.xz "$DATA" || exit 1
  fi
  # shellcheck disable=SC2086  # GRID holds several words
  python3 -m SkullVAELib train-residual --data "$DATA" --train-ids "${TRAIN:-000-055}" --val-ids "${VAL:-056-063}" \
    --draws "${DRAWS:-4}" --jobs "${JOBS:-14}" --pool-only --overwrite --out "$POOLDIR" --progress none $GRID || exit 1
  echo "pools $(($(date +%s) - T0)) s"
  POOLS="$POOLDIR/pool-train.npz"
  VALPOOLS="$POOLDIR/pool-val.npz"
fi
# shellcheck disable=SC2086  # POOLS, VALPOOLS and GRID hold several words
python3 -m SkullVAELib train-residual --out "$OUT/res" --pools $POOLS --val-pools ${VALPOOLS} --augment \
  --device "${DEV:-cuda}" --minutes "${MIN:-5}" --batch "${BATCH:-4}" --val-every "${VE:-100}" --progress none $GRID
echo "rc=$? total $(($(date +%s) - T0)) s"
