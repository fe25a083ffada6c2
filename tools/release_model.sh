#!/usr/bin/env bash
# Rebuild one model of the registry (SkullVAELib/models/models.json) from the SkullFix cases:
# facial defects -> model-grid cache -> train -> fit the completion centroids -> evaluate on
# the held-out test split -> model card with the held-out metrics -> release archive + sha256.
#
#   tools/release_model.sh NAME            e.g. tools/release_model.sh skullfix-regular-64
#
# Environment (all optional):
#   SF      SkullFix folder (complete_skull/, defective_skull/, implant/); default ../shared/data/skullfix
#   WORK    work folder; default runs/release (facial/, cache/, models/NAME, reports/NAME, release/)
#   FACIAL  an existing facial-defect data set to reuse (made with make-defects --kind facial --seed 0)
#   DEVICE  auto | cpu | cuda (default auto)
#   STEPS   subset of "data train fit eval card pack" (default: all), e.g. STEPS="data train fit"
#           on a GPU machine and STEPS="eval card pack" back on the machine with full-resolution data
#   SKV     the CLI (default "python3 -m SkullVAELib")
#   QUICK=1 2 epochs, train 000-007, test 064-065: checks the recipe end to end in minutes (not a release)
# See docs/MODELS.md for the commands per model and the measured / estimated times.
set -euo pipefail
NAME=${1:?usage: tools/release_model.sh NAME (see SkullVAELib/models/models.json)}
SF=${SF:-../shared/data/skullfix}
WORK=${WORK:-runs/release}
DEVICE=${DEVICE:-auto}
STEPS=${STEPS:-data train fit eval card pack}
SKV=${SKV:-python3 -m SkullVAELib}
TRAIN_IDS=000-063
TEST_IDS=064-079
case $NAME in
  skullfix-regular-64)
    GRID=64,64,32
    TRAIN="--preset cpu-small --lr 5e-4 --channels-first --stage 1 --beta 1e-4 --epochs 120" ;;
  skullfix-regular-128)
    GRID=128,128,64
    TRAIN="--preset paper-128 --stage 1 --beta 1e-4 --epochs 250" ;;
  skullfix-aggregated-128)
    GRID=128,128,64
    TRAIN="--preset paper-128 --stage all --beta 100 --epochs 100 --epochs2 200" ;;
  *) echo "release_model.sh: unknown model $NAME (see SkullVAELib/models/models.json)" >&2; exit 2 ;;
esac
EVAL_EXTRA=""
if [ -n "${QUICK:-}" ]; then
  TRAIN="$TRAIN --epochs 2 --epochs2 2"; TRAIN_IDS=000-007; TEST_IDS=064-065; EVAL_EXTRA="--permutations 20"
fi
VERSION=$(python3 -c "import json,sys; m=[e for e in json.load(open('SkullVAELib/models/models.json'))['models'] if e['name']==sys.argv[1]]; print(m[0]['version'] if m else 1)" "$NAME")
FACIAL=${FACIAL:-$WORK/facial}
MODEL=$WORK/models/$NAME
REPORT=$WORK/reports/$NAME
DATA="--data $SF $FACIAL"
T0=$(date +%s)
step() { echo "== [$(( $(date +%s) - T0 )) s] $*"; }
has() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
mkdir -p "$WORK"

if has data; then
  if [ ! -d "$FACIAL/facial_defective_skull" ]; then
    step "facial defects (seed 0) -> $FACIAL"
    $SKV make-defects --complete "$SF/complete_skull" --kind facial --out "$FACIAL" --seed 0
  fi
  if [ -z "${QUICK:-}" ]; then  # every case once, in parallel (QUICK: train caches only its 8 cases)
    step "model-grid cache $GRID"
    $SKV cache $DATA --grid $GRID --cache-dir "$WORK/cache" --workers "${WORKERS:-2}"
  fi
fi
if has train; then
  step "train $NAME: $TRAIN"
  $SKV train $DATA --train-ids $TRAIN_IDS --seed 0 --cache-dir "$WORK/cache" --device $DEVICE --out "$MODEL" $TRAIN
fi
if has fit; then
  step "fit the completion centroids"
  $SKV fit-completion --model "$MODEL" $DATA --train-ids $TRAIN_IDS --cache-dir "$WORK/cache" --device $DEVICE
fi
if has eval; then
  step "evaluate on the test split $TEST_IDS (original resolution)"
  $SKV evaluate --model "$MODEL" $DATA --train-ids $TRAIN_IDS --test-ids $TEST_IDS --out "$REPORT" \
    --cache-dir "$WORK/cache" --device $DEVICE $EVAL_EXTRA
fi
if has card; then
  step "model card with the held-out metrics"
  $SKV models card "$MODEL" --name "$NAME" --version "$VERSION" --metrics "$REPORT/summary.json" \
    --split "test $TEST_IDS (SkullFix, original resolution)"
fi
if has pack; then
  step "release archive"
  mkdir -p "$WORK/release"
  $SKV models pack "$MODEL" --out "$WORK/release/$NAME-v$VERSION.zip" --name "$NAME"
  echo "Upload $WORK/release/$NAME-v$VERSION.zip to the release, then set released, sha256 and size"
  echo "of '$NAME' in SkullVAELib/models/models.json (and copy the held-out metrics from $MODEL/model_card.json)."
fi
step "done ($NAME)"
