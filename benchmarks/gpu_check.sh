#!/usr/bin/env bash
# One script for a GPU machine. Run from the repository root:
#     OUT=/some/dir bash benchmarks/gpu_check.sh          (OUT defaults to /tmp/gpu_check)
# Stages, each under its own `timeout`, the whole script within TOTAL_S (default 470 s, < 8 min):
#   0. nvidia-smi; python / torch / transformers (/ trl / datasets) versions
#   1. carried wheels: .whl/*.whl -> /tmp/site, PYTHONPATH=/tmp/site:$PWD (only on Python 3.12, the GPU
#      image's; the wheels are built for it). The package itself is never pip-installed: the image has
#      torch 2.11 and pyproject pins torch 2.13, so the package comes from PYTHONPATH=$PWD.
#   2. GPU tests: python -m pytest -q -m gpu on the files that hold them               (<= 75 s)
#   3. benchmarks/logprobs_memory.py at GPU sizes -> $OUT/logprobs_memory.json       (<= 40 s)
#   4. benchmarks/gpu_bench.py --out $OUT -> $OUT/gpu_bench.json   (what is left, at most 360 s)
# Everything is tee'd into $OUT/gpu_check.log. Without CUDA it degrades: tests skip, the benchmarks run
# at smoke sizes. PY=... picks the interpreter (default python3; .venv/bin/python if python3 lacks torch).
set -u -o pipefail

OUT=${OUT:-/tmp/gpu_check}
TOTAL_S=${TOTAL_S:-470}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

PY=${PY:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1 && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
fi

remaining() { echo $((TOTAL_S - SECONDS)); }

# run_stage NAME SECONDS CMD... : run under `timeout` (never longer than what is left), record the status.
SUMMARY=()
run_stage() {
    local name=$1 limit=$2 left
    shift 2
    left=$(( $(remaining) - 5 ))
    if [ "$left" -lt "$limit" ]; then limit=$left; fi
    if [ "$limit" -lt 5 ]; then
        echo "### stage $name: SKIPPED (no time left)"
        SUMMARY+=("$name: skipped (no time left)")
        return 0
    fi
    echo "### stage $name (timeout ${limit}s, t=${SECONDS}s): $*"
    local t0=$SECONDS rc=0
    timeout -k 10 "$limit" "$@" || rc=$?
    local what="rc=$rc"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then what="TIMEOUT after ${limit}s (rc=$rc)"; fi
    echo "### stage $name: $what in $((SECONDS - t0))s"
    SUMMARY+=("$name: $what, $((SECONDS - t0))s")
    return 0
}

main() {
    echo "### gpu_check $(date -u '+%Y-%m-%d %H:%M:%S') UTC in $PWD, OUT=$OUT, PY=$PY"
    echo "### git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed paths"
    if command -v nvidia-smi >/dev/null 2>&1; then
        timeout 30 nvidia-smi || echo "nvidia-smi failed (rc=$?)"
    else
        echo "nvidia-smi: not found (no NVIDIA GPU here)"
    fi

    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    if ls .whl/*.whl >/dev/null 2>&1; then
        if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
            echo "### installing carried wheels: $(ls .whl | tr '\n' ' ')"
            if timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                    --target /tmp/site .whl/*.whl; then
                export PYTHONPATH="/tmp/site:$PYTHONPATH"
                SUMMARY+=("wheels: installed into /tmp/site")
            else
                echo "### wheel install FAILED; continuing without (TRL section will be skipped)"
                SUMMARY+=("wheels: install FAILED")
            fi
        else
            echo "### .whl/ holds Python 3.12 wheels, $PY is $("$PY" -c 'import sys; print(sys.version.split()[0])'): not installed"
            SUMMARY+=("wheels: skipped (not Python 3.12)")
        fi
    else
        echo "### no carried wheels in .whl/"
    fi
    echo "### PYTHONPATH=$PYTHONPATH"

    local gpu=0
    timeout 90 "$PY" - <<'EOF'
import importlib, sys
import torch, transformers
print(f"python {sys.version.split()[0]} ({sys.executable})")
print(f"torch {torch.__version__} cuda {torch.version.cuda} available={torch.cuda.is_available()}"
      + (f" device={torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
print(f"transformers {transformers.__version__}")
for name in ("trl", "datasets", "accelerate", "math_verify", "pyarrow", "huggingface_hub", "fsspec", "dill",
             "multiprocess", "pandas", "pytest"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name} {getattr(mod, '__version__', '?')}  ({getattr(mod, '__file__', '')})")
    except Exception as e:  # noqa: BLE001
        print(f"  {name}: NOT importable ({type(e).__name__}: {str(e)[:120]})")
try:
    import eureka_kit.engine.loop
    print(f"eureka_kit from {eureka_kit.__file__}")
except Exception as e:  # noqa: BLE001 - reported, but CUDA detection must not depend on it
    print(f"eureka_kit.engine.loop: NOT importable ({type(e).__name__}: {str(e)[:200]})")
sys.exit(0 if torch.cuda.is_available() else 3)
EOF
    case $? in
        0) gpu=1 ;;
        3) gpu=0; echo "### no CUDA: tests will skip, benchmarks run at smoke sizes" ;;
        *) gpu=0; echo "### version check FAILED (torch/transformers/eureka_kit import?); continuing" ;;
    esac

    # Only the files with GPU tests: the others import the notebook stack (plotly, nbformat), absent on a GPU image.
    run_stage pytest_gpu 75 "$PY" -m pytest -q -m gpu $(grep -l "pytest.mark.gpu" tests/test_*.py) -p no:cacheprovider

    if [ "$gpu" -eq 1 ]; then
        run_stage logprobs_memory 40 "$PY" benchmarks/logprobs_memory.py --json "$OUT/logprobs_memory.json"
    else
        run_stage logprobs_memory 40 "$PY" benchmarks/logprobs_memory.py --tokens 512 --repeats 1 \
            --json "$OUT/logprobs_memory.json"
    fi

    local left limit budget
    left=$(( $(remaining) - 5 ))
    limit=$(( left < 360 ? left : 360 ))
    budget=$(( limit - 12 ))
    if [ "$gpu" -eq 1 ]; then
        run_stage gpu_bench "$limit" "$PY" benchmarks/gpu_bench.py --out "$OUT" --budget "$budget"
    else
        run_stage gpu_bench "$limit" "$PY" benchmarks/gpu_bench.py --smoke --out "$OUT" --budget "$budget"
    fi

    echo
    echo "### gpu_check summary (${SECONDS}s total; results in $OUT)"
    for line in "${SUMMARY[@]}"; do echo "  $line"; done
    ls -la "$OUT"
}

main 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
