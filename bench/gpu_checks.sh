#!/usr/bin/env bash
# The checks that need a GPU, in one go (CI has no GPU; run this on a CUDA machine):
#   1. the CUDA tests (pytest -m cuda: context/NL blocks, training steps, fp16 resume, 30-view test)
#   2. bench_context.py on the GPU (batch 8, 8x224x224, fwd+bwd; fp32/bf16/fp16, channels_last_3d)
#   3. the toy main job on the GPU with fp16 autocast
# Logs go to $OUT (default runs/gpu_checks). Each step has its own time limit.
# Where the GPU machine's Python lacks this project's dependencies, bring them as wheels, e.g.
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       --platform manylinux2010_x86_64 -d .whl av==18.1.0 decord==0.6.0
#   pip wheel --no-deps -w .whl fvcore==0.1.5.post20221221 iopath==0.1.10 pytorchvideo==0.1.5
#   pip download --no-deps -d .whl yacs==0.1.8 parameterized==0.9.0 termcolor==3.3.0
# and there: pip install --no-index --no-deps --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
set -u
OUT=${OUT:-runs/gpu_checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
PY=${PY:-python3}
nvidia-smi -L | tee "$OUT/env.txt"
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/env.txt"
echo "== 1. CUDA tests"
timeout "${T_TESTS:-240}" $PY -m pytest -q -m cuda -p no:cacheprovider -n 4 tests 2>&1 | tee "$OUT/tests_cuda.log" | tail -40
echo "== 2. bench"
timeout "${T_BENCH:-180}" $PY bench/bench_context.py --device cuda --batch 8 --models base,gc_all,gc_all_unfused,nl5 \
    --variants fp32,fp32_cl,bf16_cl,fp16_cl --modes fwdbwd,fwd --repeats 10 --warmup 3 --json "$OUT/bench_cuda.json" \
    2>&1 | tee "$OUT/bench_cuda.log"
echo "== 3. toy main job, fp16"
rm -rf runs/toy_gpu
timeout "${T_TOY:-300}" $PY tools/run_toy.py DATA.NUM_WORKERS 12 TRAIN.MIXED_PRECISION fp16 OUTPUT_DIR runs/toy_gpu \
    2>&1 | tee "$OUT/toy_gpu.log" | grep -v "^  " | tail -25
cp runs/toy_gpu/test_*/report.txt "$OUT/toy_report.txt" 2>/dev/null
exit 0
