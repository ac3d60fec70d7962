#!/usr/bin/env bash
# Set up .venv if needed, then run all six pipeline scripts in order on the bundled sample
# data with a short training run. Output goes to $WORK_DIR (default demo_work/ in the
# repository, demo_work_e<EPOCHS>/ for other EPOCHS; a relative WORK_DIR is taken from the
# folder the script is run from). The training is a fixed amount of work (EPOCHS x 40 steps,
# EPOCHS default 15), so the result does not depend on the host's speed; only the time does
# (see README).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"     # `sh run_demo.sh` ran no step right
set -euo pipefail
EPOCHS="${EPOCHS:-15}"
if ! [[ $EPOCHS =~ ^[1-9][0-9]*$ ]]; then
    echo "error: EPOCHS must be a whole number of epochs, 1 or more; got '$EPOCHS'" >&2
    exit 2
fi
# each number of epochs trains its own model folder: a quick EPOCHS=1 try is not in the way
WORK="${WORK_DIR:-demo_work$([ "$EPOCHS" = 15 ] || echo "_e$EPOCHS")}"
[[ $WORK = /* ]] || [ -z "${WORK_DIR:-}" ] || WORK="$PWD/$WORK"
source "$(dirname "$0")/setup_env.sh"
# A second demo on the same work folder would cut its patches again under the first one's
# training (which then stops with TensorFlow's traceback): hold the folder for the whole run.
if command -v flock >/dev/null 2>&1; then
    mkdir -p "$WORK"
    exec 8<"$WORK"
    if ! flock -n 8; then
        echo "error: $WORK is in use by another run_demo.sh; wait for it to finish, or set" \
             "another WORK_DIR" >&2
        exit 1
    fi
fi
step() { printf '\n=== %s\n' "$*"; "$@"; }
start=$SECONDS

step python labelme_to_label.py --input data/labelme --data-dir data
step python gen_img_aug.py --data-dir data --work-dir "$WORK" --num-patches 3000 --patch-size 128
step python pre_processing.py --work-dir "$WORK"
# From scratch (no ImageNet download needed): 128-pixel patches and a 10x learning rate learn
# faster per step than the paper's 256 and 1e-3 (see README).
step python train_unet_xception_resnetblock.py --data-dir data --work-dir "$WORK" \
    --weights none --lr 0.01 --epochs "$EPOCHS" --steps-per-epoch 40 --val-steps 10 \
    --bn-batches 10 --swa-epochs 3
step python predict_lovasz_loss.py --data-dir data --work-dir "$WORK"
step python get_contour.py --data-dir data --work-dir "$WORK"

printf '\nIoU on the %s test images (%s/test/predict/iou.csv):\n' "$(ls "$WORK/test/src" | wc -l)" "$WORK"
python - "$WORK/test/predict/iou.csv" <<'PY'
import csv, sys
for row in csv.reader(open(sys.argv[1])):
    cells = [c if i == 0 or not c[:1].isdigit() else f"{float(c):.3f}" for i, c in enumerate(row)]
    print(f"  {cells[0]:<14}" + "".join(f"{c:>16}" for c in cells[1:]))
PY
printf '\nDemo finished in %d min %d s.\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60))
WORK="$(cd "$WORK" && pwd)"     # the lines below, wherever the script was run from
echo "Masks:    $WORK/test/predict/   IoU: $WORK/test/predict/iou.csv"
echo "Contours: $WORK/test/contours/  objects: $WORK/test/contours/objects.csv"
echo "Figures:  $WORK/figures/        model: $WORK/weights/"
