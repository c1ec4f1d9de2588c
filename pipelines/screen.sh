#!/usr/bin/env bash
# The equal-time screen of pretexts on CIFAR-10 (docs/pretexts.md). Every row pre-trains
# pipelines/cifar10.toml's ResNet-20 on the dev split, seed 0, for the same minutes: those that
# SimCLR (the pipeline as it is, row `simclr`) takes for FRACTION of the pipeline's 6,250 steps.
# Each row's time per step is measured first (20 steps on 5,120 photos, no monitor, the rows
# alternated CALIBRATION_RUNS times and the fastest run of each kept, since a shared machine's
# neighbours only ever slow a run down), which also refuses a bad row before anything long
# starts; its epochs are then set so that its steps fill the budget, every schedule (learning rate, teacher momentum, temperature) laid over them. The
# kNN monitor is read after every epoch, and `seconds` in loss.csv is each epoch's pre-training
# time without the monitor.
#
#   pipelines/screen.sh                                       # every row, a quarter of the steps
#   FRACTION=1 pipelines/screen.sh simclr dino-multicrop     # chosen rows, the full budget
#   PRECISION=bf16 pipelines/screen.sh                        # every row in bf16 (docs/precision.md)
#
# Writes $OUT/<row>/ (default runs/screen) and prints, for each row, its epochs, steps,
# pre-training minutes and kNN curve (cumulative minutes: accuracy). IMPRINT names the binary
# (default target/release/imprint: `cargo build --release` first).
set -euo pipefail

IMPRINT=${IMPRINT:-target/release/imprint}
OUT=${OUT:-runs/screen}
FRACTION=${FRACTION:-0.25}
# Every row, its calibration included, in one precision (`--precision`).
PRECISION=${PRECISION:-f32}
PIPELINE=pipelines/cifar10.toml
# The pipeline's run: 40 epochs of the 40,000 dev-split photos, 156 steps of 256 each.
PIPELINE_STEPS=6250
STEPS_PER_EPOCH=156
CALIBRATION_STEPS=20
CALIBRATION_RUNS=${CALIBRATION_RUNS:-2}

KNOWN=(simclr simclr-multicrop simclr-head simclr-wide byol byol-sgd byol-996 dino dino-multicrop vicreg)
ROWS=("${KNOWN[@]}")
if [ $# -gt 0 ]; then
    ROWS=("$@")
fi
for row in "${ROWS[@]}"; do
    if [[ ! " ${KNOWN[*]} " =~ " $row " ]]; then
        echo "screen.sh: no row \`$row\`; the rows: ${KNOWN[*]}" >&2
        exit 2
    fi
done
if [[ ! $CALIBRATION_RUNS =~ ^[1-9][0-9]*$ ]]; then
    echo "screen.sh: CALIBRATION_RUNS must be a whole number from 1, got \`$CALIBRATION_RUNS\`" >&2
    exit 2
fi

# The `--set` settings of a row over pipelines/cifar10.toml, one per line.
row_settings() {
    case $1 in
    # SimCLR as the pipeline runs it: NT-Xent at temperature 0.2, Adam 1e-3, cosine.
    simclr) ;;
    # The same with 6 small crops of 16 px, each a further positive of both full-size views.
    simclr-multicrop)
        echo 'pretrain.pretexts=[{ kind = "contrastive", temperature = 0.2, local_crops = 6, local_size = 16 }]'
        ;;
    # The same with SimCLR's own head, wider and with batch norm: 64 -> 512 -> 128 (the
    # pipeline's is 64 -> 64 -> 64 without).
    simclr-head)
        echo 'pretrain.pretexts=[{ kind = "contrastive", temperature = 0.2, hidden = 512, dim = 128, batch_norm = true }]'
        ;;
    # The same on a ResNet-20 twice as wide, 32-64-128 filters (1.1M parameters against 0.27M):
    # about four times the products a step, so about a quarter of the epochs.
    simclr-wide)
        echo 'pretrain.architecture={ kind = "resnet", depth = 20, widths = [32, 64, 128] }'
        ;;
    # BYOL at its defaults (lightly's CIFAR-10 heads, momentum 0.99 -> 1), the pipeline's Adam.
    byol)
        echo 'pretrain.pretexts=[{ kind = "byol" }]'
        ;;
    # BYOL with lightly's CIFAR-10 optimizer: SGD 0.06, momentum 0.9, weight decay 5e-4.
    byol-sgd)
        echo 'pretrain.pretexts=[{ kind = "byol" }]'
        echo 'pretrain.optimizer=sgd'
        echo 'pretrain.lr=0.06'
        echo 'pretrain.weight_decay=5e-4'
        ;;
    # BYOL with the paper's ImageNet momentum, 0.996 -> 1.
    byol-996)
        echo 'pretrain.pretexts=[{ kind = "byol", momentum = 0.996 }]'
        ;;
    # DINO at its defaults, the two full-size views only.
    dino)
        echo 'pretrain.pretexts=[{ kind = "dino" }]'
        ;;
    # DINO with 6 small crops of 16 px (2 x 32 px + 6 x 16 px).
    dino-multicrop)
        echo 'pretrain.pretexts=[{ kind = "dino", local_crops = 6, local_size = 16 }]'
        ;;
    # VICReg at its defaults (solo-learn's CIFAR expander, 2048 wide; terms 25/25/1).
    vicreg)
        echo 'pretrain.pretexts=[{ kind = "vicreg" }]'
        ;;
    esac
}

# `--set` arguments of row $1 into the array `sets`.
settings_of() {
    sets=()
    while IFS= read -r s; do
        sets+=(--set "$s")
    done < <(row_settings "$1")
}

# Seconds of the first epoch in $1/loss.csv.
first_epoch_seconds() {
    awk -F, 'NR == 2 { print $5 }' "$1/loss.csv"
}

mkdir -p "$OUT/calibrate"
# SimCLR and each named row once, in order.
CALIBRATED=()
for row in simclr "${ROWS[@]}"; do
    [[ " ${CALIBRATED[*]} " =~ " $row " ]] || CALIBRATED+=("$row")
done
declare -A per_step
for run in $(seq "$CALIBRATION_RUNS"); do
    for row in "${CALIBRATED[@]}"; do
        settings_of "$row"
        dir="$OUT/calibrate/$row-$run"
        echo "calibrating $row (run $run of $CALIBRATION_RUNS) ..." >&2
        "$IMPRINT" pretrain --pipeline "$PIPELINE" --dev --seed 0 --epochs 1 \
            --precision "$PRECISION" --max-unlabeled $((CALIBRATION_STEPS * 256)) \
            --set pretrain.monitor_labels_per_class=0 "${sets[@]}" --out "$dir" --force \
            >"$dir.log" 2>&1 ||
            { echo "screen.sh: row $row failed, see $dir.log" >&2; exit 1; }
        per_step[$row]=$(awk -v s="$(first_epoch_seconds "$dir")" -v n=$CALIBRATION_STEPS \
            -v best="${per_step[$row]:-}" 'BEGIN { x = s / n; print (best != "" && best < x ? best : x) }')
    done
done

budget=$(awk -v f="$FRACTION" -v n=$PIPELINE_STEPS -v s="${per_step[simclr]}" \
    'BEGIN { print f * n * s }')
echo "budget: $(awk -v b="$budget" 'BEGIN { printf "%.1f", b / 60 }') minutes" \
    "(SimCLR's ${per_step[simclr]} s a step for $FRACTION of $PIPELINE_STEPS steps)" >&2

for row in "${ROWS[@]}"; do
    epochs=$(awk -v b="$budget" -v s="${per_step[$row]}" -v e=$STEPS_PER_EPOCH \
        'BEGIN { x = int(b / s / e + 0.5); print (x < 1 ? 1 : x) }')
    settings_of "$row"
    echo "$row: $epochs epochs (${per_step[$row]} s a step when calibrated)" >&2
    "$IMPRINT" pretrain --pipeline "$PIPELINE" --dev --seed 0 --epochs "$epochs" \
        --precision "$PRECISION" "${sets[@]}" --out "$OUT/$row" --force >"$OUT/$row.log" 2>&1 ||
        { echo "screen.sh: row $row failed, see $OUT/$row.log" >&2; exit 1; }
done

printf '| row | epochs | steps | minutes | kNN at the end | kNN curve (minutes: accuracy) |\n'
printf '|---|---:|---:|---:|---:|---|\n'
for row in "${ROWS[@]}"; do
    awk -F, -v row="$row" -v e=$STEPS_PER_EPOCH '
        NR > 1 { t += $5; n = $1; knn = $6; curve = curve sprintf("%s%.1f: %.1f%%", sep, t / 60, 100 * $6); sep = ", " }
        END { printf "| %s | %d | %d | %.1f | %.1f%% | %s |\n", row, n, n * e, t / 60, 100 * knn, curve }
    ' "$OUT/$row/loss.csv"
done
