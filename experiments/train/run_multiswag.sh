#!/usr/bin/env bash
# Train SWAG_RUNS independent SWAG runs, then evaluate MultiSWAG, MultiSWA and the deep ensemble
# of their final SGD iterates, and plot NLL / accuracy / ECE against the number of models.
#
# The original README's example (every variable can be overridden from the environment):
#   DATASET=CIFAR100 MODEL=VGG16 EPOCHS=300 SWAG_RUNS=3 LR=0.05 WD=5e-4 SWAG_START=161 \
#   SWAG_LR=0.01 SWAG_SAMPLES=20 BASEDIR=ckpts/example DATAPATH=~/datasets \
#   bash experiments/train/run_multiswag.sh
# Optional: CORRUPTED_PATH (folder of shifted test sets), BN_SUBSET, DEVICE, METHODS,
# PYTHON, and EXTRA_TRAIN_ARGS / EXTRA_EVAL_ARGS (appended to every training / evaluation call).
# With several GPUs visible, runs train in parallel, one per GPU; otherwise one after another.
# A run whose final swag-<EPOCHS>.pt already exists is not retrained.
set -euo pipefail

: "${DATASET:=CIFAR100}" "${MODEL:=VGG16}" "${EPOCHS:=300}" "${SWAG_RUNS:=3}" "${LR:=0.05}"
: "${WD:=5e-4}" "${SWAG_START:=161}" "${SWAG_LR:=0.01}" "${SWAG_SAMPLES:=20}"
: "${BASEDIR:=ckpts/example}" "${DATAPATH:=~/datasets}"
: "${METHODS:=multiswag multiswa ensemble}" "${PYTHON:=python}"
: "${CORRUPTED_PATH:=}" "${BN_SUBSET:=}" "${DEVICE:=}" "${EXTRA_TRAIN_ARGS:=}" "${EXTRA_EVAL_ARGS:=}"
DATAPATH="${DATAPATH/#\~/$HOME}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$(cd "$HERE/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"

# GPUs to spread the training runs over: CUDA_VISIBLE_DEVICES if set, else nvidia-smi's list.
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=',' read -r -a GPUS <<< "$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi > /dev/null 2>&1; then
    mapfile -t GPUS < <(nvidia-smi --query-gpu=index --format=csv,noheader 2> /dev/null || true)
else
    GPUS=()
fi
DEVICE_ARGS=()
[[ -n "$DEVICE" ]] && DEVICE_ARGS=(--device "$DEVICE")

train() {  # train <seed>
    local seed=$1 dir="$BASEDIR/swag_$1"
    if [[ -f "$dir/swag-$EPOCHS.pt" ]]; then
        echo "swag_$seed: $dir/swag-$EPOCHS.pt exists, not retraining"
        return 0
    fi
    # shellcheck disable=SC2086  # EXTRA_TRAIN_ARGS is a list of words
    "$PYTHON" "$HERE/run_swag.py" --data_path="$DATAPATH" --epochs="$EPOCHS" \
        --dataset="$DATASET" --save_freq="$EPOCHS" --model="$MODEL" --lr_init="$LR" \
        --wd="$WD" --swag --swag_start="$SWAG_START" --swag_lr="$SWAG_LR" --cov_mat \
        --use_test --dir="$dir" --seed="$seed" "${DEVICE_ARGS[@]}" $EXTRA_TRAIN_ARGS
}

mkdir -p "$BASEDIR"
if (( ${#GPUS[@]} > 1 )); then
    pids=()
    for seed in $(seq 1 "$SWAG_RUNS"); do
        gpu="${GPUS[$(( (seed - 1) % ${#GPUS[@]} ))]}"
        CUDA_VISIBLE_DEVICES="$gpu" train "$seed" > "$BASEDIR/swag_$seed.log" 2>&1 &
        pids+=($!)
        if (( ${#pids[@]} == ${#GPUS[@]} )); then  # one run per GPU at a time
            for pid in "${pids[@]}"; do wait "$pid"; done
            pids=()
        fi
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
else
    for seed in $(seq 1 "$SWAG_RUNS"); do train "$seed"; done
fi

EVAL_ARGS=(--dataset="$DATASET" --data_path="$DATAPATH" --model="$MODEL" --use_test
           --swag_samples="$SWAG_SAMPLES" --savedir="$BASEDIR/multiswag/" "${DEVICE_ARGS[@]}")
[[ -n "$CORRUPTED_PATH" ]] && EVAL_ARGS+=(--corrupted_path="$CORRUPTED_PATH")
[[ -n "$BN_SUBSET" ]] && EVAL_ARGS+=(--bn_subset="$BN_SUBSET")
RESULTS=()
for method in $METHODS; do
    # The file each method evaluates comes from its registry entry (swag.posteriors.methods).
    name=$("$PYTHON" -c "from swag.posteriors import get_method
print(get_method('$method').member_file.format(epoch=$EPOCHS))")
    ckpts=()
    for seed in $(seq 1 "$SWAG_RUNS"); do ckpts+=("$BASEDIR/swag_$seed/$name"); done
    # shellcheck disable=SC2086
    "$PYTHON" "$HERE/eval_multiswag.py" "${EVAL_ARGS[@]}" --method="$method" \
        --swag_ckpts "${ckpts[@]}" $EXTRA_EVAL_ARGS
    RESULTS+=("$BASEDIR/multiswag/$method.json")
done
"$PYTHON" "$HERE/plot_multiswag.py" --results "${RESULTS[@]}" --out "$BASEDIR/multiswag/multiswag"
