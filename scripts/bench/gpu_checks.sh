#!/usr/bin/env bash
# The GPU checks, as run on a lent GPU machine (torch + triton, no vLLM): vLLM 0.33's Python sources from the kit
# that ../shared/gpu/make_kit.sh builds (plus a sitecustomize.py that imports its stub_missing), then
#   1. the MRV2 contract tests on CUDA (tests/e2e/test_mrv2_sampler.py: alpha 0 = MRV2's rejection_sample token for
#      token, the EARS rule and law with 100x the CPU samples, CUDA-graph replay),
#   2. bench_step --device cuda (V1 and MRV2 samplers, plugin and vLLM, wall / CUDA-event / per-kernel; the
#      temperature and top-k / top-p cases, drafts' probabilities, every request seeded),
#   3. the library's kernel tests on CUDA (equivalence, statistics, validation, stateless randomness, top-k / top-p
#      against the definition and vLLM's own top-k / top-p kernel; SKIP_KERNEL_TESTS=1 skips them),
#   4. scripts/bench/top_k_top_p.py on the GPU benchmark's rows (passes per row, vLLM's kernel against the
#      definition; the real pair's rows need transformers and the model, absent there).
# The kit's sitecustomize.py also makes MRV2's UVA buffers use vLLM's own fallback (the compiled op is absent).
# Usage, on the device from the repository root: bash scripts/bench/gpu_checks.sh OUTDIR [PART]  (KIT=.gpu-kit by
# default). PART: all (default), bench (1 and 2: at most 450 s) or tests (3 and 4: at most 240 s); a device command
# may run 600 s at most, so where compilation is slow run the two parts as two commands.
set -uo pipefail
OUT=${1:?usage: gpu_checks.sh OUTDIR [all|bench|tests]}
PART=${2:-all}
KIT=${KIT:-.gpu-kit}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$KIT"/whl/*.whl
mkdir -p /tmp/vpy && tar xzf "$KIT/vllm_py.tgz" -C /tmp/vpy
export PYTHONPATH=/tmp/site:/tmp/vpy:$PWD/$KIT:$PWD VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1
# Without an install, ears_vllm.kernels (kernels/ in the tree) resolves from a copy.
python3 -c "import ears_vllm.kernels" 2>/dev/null || cp -r kernels ears_vllm/kernels
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv
  python3 -c "import torch, triton, vllm; print('torch', torch.__version__, 'triton', triton.__version__, 'vllm', vllm.__version__, torch.cuda.get_device_name())"
} > "$OUT/gpu_env.txt" 2>&1
cat "$OUT/gpu_env.txt"
if [ "$PART" != tests ]; then
# The kit lacks vLLM's compiled ops: importing MRV2's whole model runner fails there (that test runs on CPU).
timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/e2e/test_mrv2_sampler.py -rs \
  --deselect tests/e2e/test_mrv2_sampler.py::test_runner_patch_applies_to_mrv2 2>&1 \
  | tee "$OUT/mrv2_tests_cuda.log" | tail -15
timeout 200 python3 -m scripts.bench.bench_step --device cuda --out "$OUT/bench_step_gpu.csv" --no-progress 2>&1 \
  | tee "$OUT/bench_step_gpu.log"
timeout 50 python3 -m scripts.bench.bench_step --device cuda --draft-probs --batches 64 --cases temperature --append \
  --out "$OUT/bench_step_gpu.csv" --no-progress 2>&1 | tee -a "$OUT/bench_step_gpu.log"
timeout 50 python3 -m scripts.bench.bench_step --device cuda --batches 64 --cases seeded \
  --out "$OUT/bench_step_gpu.csv" --no-progress 2>&1 | tee -a "$OUT/bench_step_gpu.log"
fi
[ "$PART" = bench ] && exit 0
[ -n "${SKIP_KERNEL_TESTS:-}" ] || timeout 180 python3 -m pytest -q -p no:cacheprovider -o addopts="" -x tests/test_equivalence.py \
  tests/test_statistics.py tests/test_validation.py tests/test_stateless.py tests/test_top_k_top_p.py \
  tests/e2e/test_top_k_top_p_vllm.py 2>&1 | tee "$OUT/kernel_tests_cuda.log" | tail -5
timeout 60 python3 -m scripts.bench.top_k_top_p --prompts 0 --synthetic 64 --device cuda \
  --out "$OUT/top_k_top_p_gpu.csv" 2>&1 | tee "$OUT/top_k_top_p_gpu.log"
