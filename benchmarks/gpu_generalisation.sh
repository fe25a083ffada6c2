#!/bin/bash
# Issue 9's GPU recipe in one time-boxed run on a lent GPU machine (docs/results/issue-09.md,
# section "GPU recipe"): the regular VAE (β = 1e-4) of the paper's network at 128×128×64, trained
# on SkullFix 000-055 (complete + cranial-defective) with and without `--augment`, both at once on
# one GPU, validation 056-063 every 10 epochs keeping the best weights, stopped at a deadline with
# SIGINT (the trainer checkpoints), finalised with `--resume --epochs <done>`, fitted
# (`fit-completion` on 000-055) and tarred into $OUT. Scoring (reconstruction gap, implants at the
# original resolution) happens on the CPU machine, which has the full-resolution cases.
#
# Needs the device kit in .device/ (../shared/device/README.md: skullfix_half.xz, unpack.py and the
# SimpleITK wheel). On the device, from the checkout's root:
#     END=330 bash benchmarks/gpu_generalisation.sh
# Dry run on a CPU (small grid, a few epochs):
#     OUT=/tmp/o SKIPPIP=1 DEV=cpu GRID=32,32,16 PRESET=test END=60 bash benchmarks/gpu_generalisation.sh
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
R=$(pwd); W=${W:-/tmp/w}; T0=$(date +%s)
el() { echo $(($(date +%s) - T0)); }
# a bare `wait` would also wait for the `tee` of the log below, forever: wait for the jobs only
waitjobs() { local p; for p in $(jobs -p); do wait "$p"; done; }
mkdir -p /tmp/site "$W" "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
[ -n "${SKIPPIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site .device/*.whl || exit 1
export PYTHONPATH=/tmp/site:$R
PY=${PY:-python3}
SKV="$PY -m SkullVAELib"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
[ -d "$W/data/complete_skull" ] || $PY "$R/.device/unpack.py" "$R/.device/skullfix_half.xz" "$W/data" || exit 1
echo "unpacked at $(el)s"
C="--grid ${GRID:-128,128,64} --cache-dir $W/cache"
$SKV cache --data "$W/data" $C --workers ${WORKERS:-14} --progress none > "$W/cache.log" 2>&1
echo "cache rc=$? at $(el)s"
D="--data $W/data $C --device ${DEV:-cuda} --preset ${PRESET:-paper-128} --train-ids 000-055 --val-ids 056-063
   --val-every 10 --stage 1 --beta 1e-4 --checkpoint-every 5 --progress none"
END=${END:-330}
timeout -s INT $((END - $(el))) $SKV train $D --out "$W/plain" --epochs 100000 > "$W/plain.log" 2>&1 &
timeout -s INT $((END - $(el))) $SKV train $D --out "$W/aug" --epochs 100000 --augment > "$W/aug.log" 2>&1 &
waitjobs
echo "training window closed at $(el)s"
ep() { $PY -c "from SkullVAELib.training.checkpoint import load_checkpoint as l, checkpoint_path as p; print(l(p('$1',1))['epoch'])"; }
for m in plain aug; do
  E=$(ep "$W/$m"); echo "$m: $E epochs"
  A=""; [ $m = aug ] && A=--augment
  ($SKV train $D --out "$W/$m" --epochs "$E" --resume $A > "$W/${m}_final.log" 2>&1 &&
   $SKV fit-completion --model "$W/$m" --data "$W/data" --train-ids 000-055 --cache-dir "$W/cache" \
       --device ${DEV:-cuda} > "$W/${m}_fit.log" 2>&1; echo "$m finalised rc=$? at $(el)s") &
done
waitjobs
cd "$W" || exit 1
for m in plain aug; do
  tar -cf "$OUT/$m.tar" $m/config.json $m/completion.json $m/*.safetensors $m/model_card.*
done
tar -czf "$OUT/logs.tgz" ./*.log plain/*.csv plain/*.png aug/*.csv aug/*.png 2>/dev/null
ls -la "$OUT"; echo "all done at $(el)s"
