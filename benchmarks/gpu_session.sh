#!/usr/bin/env bash
# All GPU figures of bitconvert in one command, within one 10-minute device call.
#
# Call, from the repository root, with OUT set to a folder that comes back (created if missing):
#
#     OUT=/some/dir bash benchmarks/gpu_session.sh
#
# (device tool: command "bash benchmarks/gpu_session.sh", carry [".whl"]; $OUT is set there.)
#
# Steps, each under `timeout` with the budget below, all run even when one fails; the exit status
# is 0 only when every step passed:
#   1. preflight   GPU and versions; installs what is missing from .whl/ (see below)  -> env.txt
#   2. kernels     TRITON_INTERPRET=0 pytest tests/runtime/test_ternary_kernels.py     -> kernel_tests.log
#      (meanwhile, in the background: the 30-layer 2B-4T-shaped checkpoint for step 4, on the CPU)
#   3. kernel bench  benchmarks/kernels.py --json                                      -> kernels.txt, kernels.json
#   4. runtime bench benchmarks/runtime.py --device cuda (runtime vs transformers)     -> runtime.txt, runtime.json
#   then a summary of steps and the decode ratio                                       -> summary.txt
# At most 7 files in $OUT. Budgets are environment-overridable (seconds); every step's timeout is
# capped by what is left of TOTAL_S (540), so the script ends within about 9 minutes whatever hangs.
# Expected on an H100: preflight ~15 s, kernel tests ~1 min, kernel bench ~3 min, runtime bench
# 2-3 min (30 layers; transformers compiles its unpack/quantizers on first use).
#
# Wheels (.whl/, ignored by git, so pass it in the device tool's `carry`): the GPU image has torch,
# triton, transformers, safetensors, typer, rich, huggingface_hub, numpy, pytest, pyyaml, tqdm, but
# - accelerate: transformers refuses to load any BitNet-quantized model without it (its
#   BitNetHfQuantizer.validate_environment), so without it the transformers column fails;
# - psutil: a requirement of accelerate (memory queries for device maps); imported lazily, carried anyway;
# - gguf: NOT needed by these steps (bitconvert, bitconvert.runtime, bitconvert.kernels and
#   tests/runtime/test_ternary_kernels.py import without it; only the GGUF format code does),
#   carried for completeness.
# Each is installed (into /tmp/site, on PYTHONPATH) only when its module does not import already.
# Prepared on the development machine (CPython 3.11 there; the GPU image has 3.12) with the versions
# installed there (`pip show gguf accelerate psutil`):
#
#     for p in gguf==0.19.0 accelerate==1.15.0 psutil==7.2.2; do
#       python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         -d .whl "$p"
#     done
#
# Without CUDA (e.g. on the development machine) every step still runs and the GPU ones fail or
# skip quickly with their own message; the background checkpoint generation is skipped.

set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)

# --- budgets (seconds) ----------------------------------------------------------------------------
PREFLIGHT_S=${PREFLIGHT_S:-45}           # nvidia-smi, versions, wheel install
KERNEL_TESTS_S=${KERNEL_TESTS_S:-90}     # compiled Triton kernels against the torch reference
GENERATE_S=${GENERATE_S:-120}            # 30-layer checkpoint, from the start of step 2 (overlaps it)
KERNEL_BENCH_S=${KERNEL_BENCH_S:-180}    # incl. torch.compile of the transformers-style baseline
RUNTIME_BENCH_S=${RUNTIME_BENCH_S:-210}  # both engines: load, warm-up (compiles), prefill, decode
TOTAL_S=${TOTAL_S:-540}                  # no step starts (or runs) past this; 600 s is the device limit
# runtime benchmark shape: 2B-4T depth and vocab (the defaults of --device cuda)
RUNTIME_LAYERS=${RUNTIME_LAYERS:-30}
RUNTIME_PROMPT=${RUNTIME_PROMPT:-128}
RUNTIME_DECODE=${RUNTIME_DECODE:-64}
RUNTIME_REPEATS=${RUNTIME_REPEATS:-3}
RUNTIME_ENGINES=${RUNTIME_ENGINES:-bitconvert-bf16,transformers}  # add bitconvert-bf16-torch: kernels off

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1  # no network on the GPU machine
export TRITON_INTERPRET=0  # compiled kernels everywhere (the interpreter would run CUDA tensors too, slowly)
PY=${PY:-python3}
MODEL_DIR=${MODEL_DIR:-/tmp/bitconvert-gpu-session-model}
GEN_LOG=/tmp/bitconvert-gpu-session-generate.log
STATUS=()   # "step status seconds" lines
FAILED=0

left() { echo $((TOTAL_S - SECONDS)); }

# run_step NAME BUDGET LOG CMD...: CMD under timeout (capped by what is left of TOTAL_S), output to the
# terminal and to LOG; records ok / FAILED (exit n) / TIMEOUT / SKIPPED.
run_step() {
    local name=$1 budget=$2 log=$3 start=$SECONDS rc status
    shift 3
    local cap=$(( $(left) - 5 ))
    (( budget > cap )) && budget=$cap
    echo
    echo "=== $name: budget ${budget}s, $(left)s left in the session; $*"
    if (( budget < 10 )); then
        echo "no time left for $name" | tee -a "$log"
        STATUS+=("$name SKIPPED(no-time) 0"); FAILED=1; return
    fi
    timeout -k 10 "$budget" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124|137) status="TIMEOUT(${budget}s)"; FAILED=1 ;;
        *) status="FAILED(exit-$rc)"; FAILED=1 ;;
    esac
    echo "=== $name: $status in $((SECONDS - start))s"
    STATUS+=("$name $status $((SECONDS - start))")
}

rm -f "$OUT"/{env.txt,kernel_tests.log,kernels.txt,kernels.json,runtime.txt,runtime.json,summary.txt}

# --- 1. preflight -------------------------------------------------------------------------------
# shellcheck disable=SC2329  # run through `bash -c preflight` (export -f) so that timeout can bound it
preflight() {
    echo "date: $(date -u +%FT%TZ)  host: ${HOSTNAME:-?}  repo: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi -L
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    "$PY" --version
    local need=() whl mod
    for whl in .whl/*.whl; do
        [[ -e $whl ]] || { echo ".whl/: no wheels (fine unless accelerate is missing below)"; break; }
        mod=$(basename "$whl"); mod=${mod%%-*}
        if "$PY" -c "import $mod" 2>/dev/null; then echo "$mod: already importable, $whl not installed"
        else need+=("$whl"); fi
    done
    if (( ${#need[@]} )); then
        echo "installing into /tmp/site: ${need[*]}"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "${need[@]}" || echo "WARNING: wheel install failed"
    fi
    "$PY" - <<'EOF'
import importlib
import importlib.metadata as md

for name in ("torch", "triton", "transformers", "accelerate", "safetensors", "numpy", "psutil", "gguf", "pytest"):
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        version = "MISSING"
    try:
        importlib.import_module(name)
        imports = "imports"
    except Exception as exc:  # report, do not stop
        imports = f"does NOT import: {type(exc).__name__}: {exc}"
    print(f"{name:>13} {version:<16} {imports}")
import torch

print("torch CUDA build:", torch.version.cuda, "| cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.1f} GiB")
import bitconvert.runtime  # noqa: F401  (the runtime's imports work)
from bitconvert.kernels import triton_unavailable_reason

print("bitconvert kernels:", triton_unavailable_reason() or "Triton importable")
EOF
}
[[ -d /tmp/site ]] || mkdir -p /tmp/site
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export -f preflight; export PY
run_step preflight "$PREFLIGHT_S" "$OUT/env.txt" bash -c preflight
HAVE_CUDA=0
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && HAVE_CUDA=1
(( HAVE_CUDA )) || echo "NOTE: no CUDA device: the GPU steps below will fail or skip" | tee -a "$OUT/env.txt"

# --- 2. kernel tests, with the runtime's checkpoint generated meanwhile -----------------------------
GEN_PID=
if (( HAVE_CUDA )); then
    echo "generating the ${RUNTIME_LAYERS}-layer checkpoint in the background (log: $GEN_LOG)"
    timeout -k 10 "$GENERATE_S" "$PY" benchmarks/runtime.py --generate-only "$MODEL_DIR" \
        --layers "$RUNTIME_LAYERS" >"$GEN_LOG" 2>&1 &
    GEN_PID=$!
fi
run_step kernel-tests "$KERNEL_TESTS_S" "$OUT/kernel_tests.log" \
    env TRITON_INTERPRET=0 "$PY" -m pytest -q -p no:cacheprovider tests/runtime/test_ternary_kernels.py

MODEL_ARGS=()
if [[ -n $GEN_PID ]]; then
    echo "waiting for the checkpoint (at most $GENERATE_S s from its start)"
    if wait "$GEN_PID"; then
        MODEL_ARGS=(--model "$MODEL_DIR/packed")
        echo "checkpoint ready: $(tail -n 1 "$GEN_LOG")"
    else
        echo "checkpoint generation failed (the runtime benchmark generates its own):"; tail -n 5 "$GEN_LOG"
    fi
fi

# --- 3. kernel benchmark --------------------------------------------------------------------------
run_step kernel-bench "$KERNEL_BENCH_S" "$OUT/kernels.txt" "$PY" benchmarks/kernels.py --json "$OUT/kernels.json"

# --- 4. runtime benchmark -------------------------------------------------------------------------
# --budget: the benchmark shares out its time itself and writes runtime.json after each engine,
# so an engine that overruns still leaves the other one's figures; timeout is the backstop.
rb=$(( RUNTIME_BENCH_S < $(left) - 20 ? RUNTIME_BENCH_S : $(left) - 20 ))
run_step runtime-bench "$((rb + 15))" "$OUT/runtime.txt" \
    "$PY" benchmarks/runtime.py --device cuda --layers "$RUNTIME_LAYERS" --prompt "$RUNTIME_PROMPT" \
    --decode "$RUNTIME_DECODE" --repeats "$RUNTIME_REPEATS" --engines "$RUNTIME_ENGINES" --budget "$rb" \
    "${MODEL_ARGS[@]}" --json "$OUT/runtime.json"
rm -rf "$MODEL_DIR"

# --- summary --------------------------------------------------------------------------------------
{
    echo "gpu_session: $(date -u +%FT%TZ), ${SECONDS}s; $(nvidia-smi -L 2>/dev/null | head -n 1 || echo 'no nvidia-smi')"
    printf '%-14s %-22s %s\n' step status seconds
    for s in "${STATUS[@]}"; do read -r a b c <<<"$s"; printf '%-14s %-22s %s\n' "$a" "$b" "$c"; done
    echo "kernel tests: $(grep -E '(passed|failed|skipped|error)' "$OUT/kernel_tests.log" | tail -n 1)"
    grep -E "^(decode tok/s|  greedy tokens|[a-z0-9-]+ FAILED)|^kernel_linears|^decode_tok_s_median" \
        "$OUT/runtime.txt" 2>/dev/null
    ls "$OUT"
} | tee "$OUT/summary.txt"
exit "$FAILED"
