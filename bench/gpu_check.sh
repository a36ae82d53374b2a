#!/usr/bin/env bash
# One prepared command for a machine with a CUDA GPU: the training benchmark at GPU sizes in bf16
# (eager at 20M, 100M and 300M parameters; torch.compile at 100M), the CUDA-only test, and a two-budget
# mini sweep end to end; prints tokens/s, MFU against the bf16 matmul peak it measures, and wall times.
# Each stage has a timeout; all of them together stay under 8 minutes.
#
#   bench/gpu_check.sh            # on the GPU machine, from anywhere
#   bench/gpu_check.sh --dry-run  # the same stages on the CPU at toy sizes: checks the script itself
#
# Output folder: $OUT if set, else a new temporary one (the sweep's store and Prefect home go there).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then :; elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PREFECT_HOME="$OUT/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false
started=$SECONDS
failed=()

stage() {  # stage NAME TIMEOUT_SECONDS COMMAND...: run, time, and record a failure without stopping
    local name=$1 limit=$2 began=$SECONDS
    shift 2
    echo
    echo "== $name (limit ${limit} s; $((SECONDS - started)) s since the start)"
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    local status=$?
    echo "== $name: $((SECONDS - began)) s wall, exit $status"
    [ "$status" -eq 0 ] || failed+=("$name (exit $status$([ "$status" -eq 124 ] && echo ', timed out'))")
}

if [ "${1:-}" = "--dry-run" ]; then
    device=cpu eager_sizes=25k compiled_sizes=25k windows=1
    spec="$OUT/gpu-check-dry-run.yaml"
    "$PYTHON" - "$spec" <<'EOF' || exit 2
import sys, yaml
spec = yaml.safe_load(open("bench/gpu-check.yaml"))
spec["train"] |= {"device": "cpu", "context": 64, "tokens_per_step": 1024, "min_steps": 16}
spec["grid"] |= {"model_sizes": [3000, 7000, 15000, 30000], "budgets": [2.0e9, 4.0e9]}
spec |= {"corpus": {"max_documents": 40}, "vocab": {"size": 512}, "eval": {"val_tokens": 4096}}
yaml.safe_dump(spec, open(sys.argv[1], "w"))
EOF
else
    device=cuda eager_sizes=20m,100m,300m compiled_sizes=100m windows=3
    spec=bench/gpu-check.yaml
    "$PYTHON" - <<'EOF' || exit 3
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(
        f"bench/gpu_check.sh needs a CUDA GPU, and torch {torch.__version__} (CUDA {torch.version.cuda}) "
        "sees none here; install a CUDA build of torch on a GPU machine, or pass --dry-run on a CPU."
    )
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): "
      f"{torch.cuda.get_device_name()}")
EOF
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,utilization.gpu --format=csv
fi

stage "training benchmark, bf16, eager" 80 \
    "$PYTHON" bench/bench_train.py --device "$device" --bf16 --sizes "$eager_sizes" --windows "$windows" --steps 3
stage "training benchmark, bf16, torch.compile" 200 \
    "$PYTHON" bench/bench_train.py --device "$device" --bf16 --compile --sizes "$compiled_sizes" --windows "$windows" --steps 3
if "$PYTHON" -c "import pytest" 2>/dev/null; then
    stage "device tests (the CUDA one runs on a GPU)" 45 \
        "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_device.py -k "cuda or auto"
fi
stage "two-budget mini sweep ($spec)" 120 \
    "$PYTHON" -m flows.cli run --spec "$spec" --store "$OUT/store"
stage "the mini sweep's cells" 30 \
    "$PYTHON" -m flows.cli query --format csv --store "$OUT/store" "select d_model, n_layers, params_nonembedding as n,
        tokens_seen as d, device, precision, round(tokens_per_second) as tokens_per_s, round(mfu, 3) as mfu,
        round(train_seconds, 1) as train_s, round(val_loss_nats, 3) as val_nats
        from runs order by params_nonembedding, tokens_seen"

echo
echo "gpu_check: $((SECONDS - started)) s in all; output in $OUT"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'failed: %s\n' "${failed[@]}"
    exit 1
fi
