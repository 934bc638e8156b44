#!/usr/bin/env bash
# Issue 19's GPU work in one device call (bench/gpu_lease.py prepares .gpu/ and unpacks the result).
#
#   device run: command "bash bench/gpu_recipe.sh", carry [".gpu"], timeout_s 590
#
# 1. bench/bench_pipeline.py on the GPU: raw step and fed pipeline, Lite2 at 150x200 and 300x400;
# 2. Lite2 members at 150x200 on the shipped split: the shipped recipe (v2: logit-adjusted loss, label
#    smoothing, EMA, metadata) and one with cross-entropy, each under what is left of BUDGET_S (default
#    450 s) and not started with less left than the last member took (MIN_MEMBER_S, default 70 s, for
#    the first); one cut short is left out;
# 3. $OUT/runs.tar.part-*: the finished runs without checkpoints, in parts of 15 MiB;
# 4. their ensemble card, reports and calibrations in $OUT/ensemble.tar.gz (its stacked weights are
#    rebuilt here by `ensemble`), and $OUT/recipe.log.
# A CPU dry run: BUDGET_S=1500 ONE_EPOCH=1 GPU_LIMIT=300 PIPE_STEPS=1 OUT=/tmp/out bash bench/gpu_recipe.sh
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}"
export PYTHONPATH="$PWD/.gpu/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20
DATA=.gpu/ham10000
BUDGET_S=${BUDGET_S:-450}
MIN_MEMBER_S=${MIN_MEMBER_S:-70}
ONE_EPOCH=${ONE_EPOCH:-0}                # 1: one epoch each (the CPU dry run)
LIMIT=${GPU_LIMIT:+--limit $GPU_LIMIT}   # a subset of the photos (the CPU dry run)
PIPE_STEPS=${PIPE_STEPS:-20}             # timed steps of the pipeline bench, each way
LOG=$OUT/recipe.log
deadline=$((SECONDS + BUDGET_S))
exec > >(tee -a "$LOG") 2>&1

echo "== $(date -u +%FT%TZ) $(python -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true

echo "== pipeline"
for size in "150 200" "300 400"; do
    python bench/bench_pipeline.py --data "$DATA" --arch tf_efficientnet_lite2 --image-size $size --images 2048 \
        --steps "$PIPE_STEPS" || echo "bench_pipeline $size failed"
done

# Members share one input size (an ensemble averages networks that see the same picture); they differ
# in seed and loss: on validation, v1 (cross-entropy) + v2 (logit-adjusted) gained most (docs/changes.md).
# name  arch  seed  epochs  loss
MEMBERS=(
    "gpu_l2_s0    tf_efficientnet_lite2 0 30 logit_adjusted"
    "gpu_l2_ce_s1 tf_efficientnet_lite2 1 30 cross_entropy"
    "gpu_l2_s2    tf_efficientnet_lite2 2 30 logit_adjusted"
)
done_runs=()
for m in "${MEMBERS[@]}"; do
    read -r name arch seed epochs loss <<<"$m"
    [ "$ONE_EPOCH" = 1 ] && epochs=1
    left=$((deadline - SECONDS))
    need=${took:-$MIN_MEMBER_S}          # the last member's time: one that cannot finish is not started
    if [ "$left" -lt "$need" ]; then echo "== $name skipped: ${left} s left, ${need} s needed"; continue; fi
    echo "== $name ($arch 150x200, seed $seed, $epochs epochs, $loss; ${left} s left)"
    start=$SECONDS
    smoothing=$([ "$loss" = logit_adjusted ] && echo 0.1 || echo 0)
    timeout --signal=INT "$left" python -m derm_core train --data "$DATA" --out "runs/$name" --arch "$arch" \
        --image-size 150 200 --split-file weights/default/split.csv --seed "$seed" --epochs "$epochs" \
        --metadata --loss "$loss" --label-smoothing "$smoothing" --ema-decay 0.998 --freeze-epochs 1 \
        --monitor val_macro_auc --patience "$epochs" $LIMIT
    rc=$?
    took=$((SECONDS - start))
    echo "== $name: exit $rc after $took s"
    [ "$rc" = 0 ] && [ -f "runs/$name/model.json" ] && done_runs+=("runs/$name")
done

# the members come back first: a call cut short by its time limit still returns what is under $OUT
echo "== packing ${done_runs[*]:-nothing}"
if [ "${#done_runs[@]}" -gt 0 ]; then
    tar czf - --exclude='last.*' --exclude='best.*' --exclude='teacher-*' -C runs "${done_runs[@]#runs/}" \
        | split -b 15M - "$OUT/runs.tar.part-"
fi
if [ "${#done_runs[@]}" -ge 2 ]; then
    echo "== ensemble of ${done_runs[*]}"
    # its card, reports and calibrations; its weights are its members' (rebuilt here by `ensemble`)
    python -m derm_core ensemble "${done_runs[@]}" --data "$DATA" --out runs/gpu_ens &&
        tar czf "$OUT/ensemble.tar.gz" --exclude='model.safetensors' -C runs gpu_ens
fi
ls -l "$OUT"
echo "== done in $SECONDS s"
