#!/bin/bash
# Issue 9's learned facial refiner, GPU recipe, as one time-boxed run on a lent GPU machine
# (docs/results/issue-09.md, "Facial defects: the learned refiner"). The GPU machine needs neither
# SimpleITK nor the SkullFix files: the complete skulls are packed on the CPU machine first,
#     skullvae train-refiner --data ../shared/data/skullfix --train-ids 000-055 --val-ids 056-063 \
#         --pack-only --out .device/grids.npz          # 64 skulls on 1 mm LPS grids, 6.3 MB, ~3 min
# and .device/ also holds the MONAI wheel (`pip download --no-deps monai==1.6.1 -d .device`).
# On the device, from the checkout's root (send .device/ along: `carry [".device"]`):
#     MIN=6.6 bash benchmarks/gpu_refiner.sh
# $OUT/ref gets refiner.safetensors (best validation Dice, fp16), training_log.csv, refiner_curves.png and
# checkpoints/refiner.pt (a run stopped by its time budget or a signal continues with --resume).
# With the levers the CPU recipe proved (issue 24 §4; docs/results/issue-24-2026-12-05.md, "The facial CPU recipe: a higher
# learning rate ..."; not yet measured on a GPU): pack the 60 extra skulls too (add
# `--extra ../shared/data/skullfix_test` to the --pack-only command above, 124 skulls, ~12 MB), then
#     GRIDS=.device/grids_x.npz MIN=6.6 EXTRA="--packed-extras --output-head --test-time-mirror \
#         --test-time-shifts 2 --lr 2e-3 --lr-schedule cosine" bash benchmarks/gpu_refiner.sh
# (--packed-extras: the device has the packed file, not the skulls' folder).
# Dry run on a CPU: OUT=/tmp/o SKIPPIP=1 DEV=cpu MIN=0.2 EXTRA="--crop 32,32,32 --channels 4,8,16" \
#     bash benchmarks/gpu_refiner.sh
# shellcheck source=benchmarks/gpu_setup.sh
. "$(dirname "$0")/gpu_setup.sh"
# shellcheck disable=SC2086  # EXTRA holds several flags
python3 -m SkullVAELib train-refiner --grids "${GRIDS:-.device/grids.npz}" --out "$OUT/ref" \
  --train-ids 000-055 --val-ids 056-063 --device "${DEV:-cuda}" --minutes "${MIN:-6.6}" \
  --batch "${BATCH:-4}" --val-every "${VE:-100}" --progress none ${EXTRA:-}
echo "rc=$? total $(($(date +%s) - T0)) s"
