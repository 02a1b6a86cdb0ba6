#!/usr/bin/env bash
# The main job of COPS on the two bundled COCO images (datasets/coco_panoptic_sample), on the CPU:
#   1. pretraining (configs/sample/cops_R_18_pretrain.yaml), evaluated at its end;
#   2. fully differentiable training through the AMWC layer from the stage-1 model
#      (configs/sample/cops_R_18_fully_differentiable.yaml), evaluated at its end;
#   3. evaluation of the final model (--eval-only: PQ/SQ/RQ, mIoU, instance AP);
#   4. the demo: the panoptic segmentation drawn over each image.
# Run from anywhere; it works in the repository root, where Detectron2's default dataset root
# ./datasets holds the sample (no environment variable needed). Outputs go to output/sample/.
#
#   bash tools/run_sample.sh                 # one process
#   NUM_GPUS=2 bash tools/run_sample.sh      # two processes (CPU: gloo; must divide the batch, 2)
#
# Extra arguments are passed to both training runs as config overrides (KEY VALUE ...).
set -euo pipefail
cd "$(dirname "$0")/.."

NUM_GPUS="${NUM_GPUS:-1}"
OUT=output/sample
FINAL="$OUT/fully_differentiable/model_final.pth"
FD_YAML=configs/sample/cops_R_18_fully_differentiable.yaml

elapsed() { echo "$(( $(date +%s) - $1 ))"; }

t0=$(date +%s)
python tools/train_net.py --num-gpus "$NUM_GPUS" \
    --config-file configs/sample/cops_R_18_pretrain.yaml "$@"
t_pre=$(elapsed "$t0")

t0=$(date +%s)
python tools/train_net.py --num-gpus "$NUM_GPUS" --config-file "$FD_YAML" "$@"
t_fd=$(elapsed "$t0")

t0=$(date +%s)
python tools/train_net.py --eval-only --num-gpus "$NUM_GPUS" --config-file "$FD_YAML" \
    MODEL.WEIGHTS "$FINAL" OUTPUT_DIR "$OUT/eval"
t_eval=$(elapsed "$t0")

python tools/demo.py --config-file "$FD_YAML" \
    --input datasets/coco_panoptic_sample/images --output "$OUT/demo" \
    MODEL.WEIGHTS "$FINAL"

# Summary: the evaluation lines of each log (Detectron2's "copypaste" csv).
for run in pretrain fully_differentiable eval; do
    echo "== $run: $(grep -A2 'copypaste: Task: panoptic_seg' "$OUT/$run/log.txt" | tail -2 \
        | sed 's/.*copypaste: //' | paste -sd' ' -)"
done
echo "== times: pretraining ${t_pre} s, fully differentiable ${t_fd} s, evaluation ${t_eval} s"
echo "== demo images: $(ls "$OUT"/demo/*_panoptic.png | tr '\n' ' ')"
