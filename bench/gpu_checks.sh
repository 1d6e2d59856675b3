#!/usr/bin/env bash
# Every check that needs a GPU, in one call of about 6 minutes (CI has no GPU):
#   0. environment: GPU, driver, torch / CUDA / cuDNN versions, CPU cores
#   1. the CUDA tests (pytest -m cuda: blocks, training steps, fp16 resume, 30-view test, decoders)
#   2. model-only training step (bench/bench_gpu.py): base, +all GC, +5 NL; fp32/bf16/fp16 eager,
#      bf16 torch.compile (the model side of TRAIN.COMPILE, which compiles the same module for the
#      training and eval steps); clips/s, peak memory, model FLOPs utilisation; a kernel table of the
#      best baseline setting (what limits it)
#   3. end to end (bench/bench_gpu_e2e.py): train_net.py on Kinetics-like clips with 16 loader
#      workers per decoder (clips/s, data-wait share), then the 30-view test_net.py (videos/s)
#   4. the toy main job on the GPU (wall time, top-1)
# Each step has its own time limit (T_* below) and the rest still runs after a failure or a
# time-out; steps.txt lists each step's exit status and seconds. Everything lands in $OUT
# (at most 8 files come back from a device call): env.txt steps.txt tests_cuda.log bench_gpu.log
# bench_gpu.json profile.txt e2e.log toy_gpu.log.
#
# On the device machine (no internet; its own torch is used), bring the missing packages as wheels:
#   here:  bash bench/gpu_wheels.sh                       (fills the git-ignored .whl/, ~50 MB)
#   there: carry .whl, then   bash bench/gpu_checks.sh    (installs .whl/*.whl into /tmp/site)
# Dry run on a CPU machine (CUDA steps skipped, tiny sizes): DRY=1 OUT=/tmp/gc bash bench/gpu_checks.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
PY=${PY:-python3}
DRY=${DRY:-0}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && [ "$DRY" = 0 ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
: > "$OUT/steps.txt"

step() {  # step NAME SECONDS LOG COMMAND...: run with a time limit, record status and duration
    local name=$1 limit=$2 log=$3; shift 3
    local t0=$SECONDS
    echo "== $name (limit ${limit}s)" | tee -a "$log"
    timeout -k 10 "$limit" "$@" >>"$log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$OUT/steps.txt"
    tail -n 25 "$log"
}

# 0. environment
{
    date -u; nproc; nvidia-smi 2>&1 | head -15
    $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpu',
torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
    $PY -c "import av, fvcore, iopath, pytorchvideo; print('av', av.__version__)" 2>&1 | tail -1
    $PY -c "import torchcodec; print('torchcodec', torchcodec.__version__)" 2>&1 | tail -1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if $PY -c "import torchcodec.decoders" >/dev/null 2>&1; then DECODERS=pyav,torchcodec; else DECODERS=pyav; fi

if [ "$DRY" = 0 ]; then
    step cuda_tests "${T_TESTS:-100}" "$OUT/tests_cuda.log" \
        $PY -m pytest -q -m cuda -p no:cacheprovider -n 4 tests
    step bench_eager "${T_EAGER:-70}" "$OUT/bench_gpu.log" \
        $PY bench/bench_gpu.py --compile eager --batch 16 --json "$OUT/bench_gpu.json" --profile "$OUT/profile.txt"
    step bench_compiled "${T_COMPILE:-110}" "$OUT/bench_gpu.log" \
        $PY bench/bench_gpu.py --compile compiled --precisions bf16 --models base,gc_all --batch 16 \
        --json "$OUT/bench_gpu_compiled.json"
    step e2e "${T_E2E:-120}" "$OUT/e2e.log" \
        $PY bench/bench_gpu_e2e.py --out runs/gpu_e2e --decoders "$DECODERS" --workers 16 --iters 30 --timeout 50
    step toy "${T_TOY:-90}" "$OUT/toy_gpu.log" \
        $PY tools/run_toy.py DATA.NUM_WORKERS 12 TRAIN.MIXED_PRECISION bf16 OUTPUT_DIR runs/toy_gpu_$$
else  # CPU dry run: the same scripts at toy sizes, CUDA tests skipped
    step bench_eager "${T_EAGER:-300}" "$OUT/bench_gpu.log" \
        $PY bench/bench_gpu.py --device cpu --compile eager --precisions fp32 --batch 1 --size 32 --steps 2 \
        --warmup 1 --json "$OUT/bench_gpu.json" --profile "$OUT/profile.txt"
    step e2e "${T_E2E:-400}" "$OUT/e2e.log" \
        $PY bench/bench_gpu_e2e.py --out "$OUT/e2e_runs" --device cpu --clips 4 --iters 2 --batch 2 --size 64 \
        --workers 2 --test-videos 2 --decoders "$DECODERS" --precision none --timeout 300
fi
[ -f "$OUT/bench_gpu_compiled.json" ] && cat "$OUT/bench_gpu_compiled.json" >> "$OUT/bench_gpu.log" \
    && rm "$OUT/bench_gpu_compiled.json"
[ -f runs/gpu_e2e/e2e.json ] && cat runs/gpu_e2e/e2e.json >> "$OUT/e2e.log"
cat "$OUT/steps.txt"
exit 0
