#!/usr/bin/env bash
# The checks a lent GPU machine runs in one call (device tool, see docs/TRAINING.md section 6):
#   1. the training tests on CUDA (SFT, LoRA in bf16, GRPO, DAgger, the VLM policy);
#   2. benchmarks/sdpa_backends.py: attention per SDPA backend at the bundled agent's shapes;
#   3. benchmarks/gpu_check.py: the bundled agent on CUDA (bf16, bf16 with cuDNN's attention,
#      fp32) against the CPU's per-case IoUs, with a cProfile of where each run's time goes.
# The machine's image has torch, accelerate, peft and scikit-image; transformers is carried as a
# wheel in .whl/ (the version pinned in setup.cfg). Results land in $OUT (default /tmp/gpu-out).
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
# installed without its dependencies, so that the training package's subcommands (entry points) exist
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1 || tail -n 5 "$OUT/install.log"
python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
start=$(date +%s)
timeout "${TEST_SECONDS:-170}" python3 -m pytest -q -p no:cacheprovider --timeout 90 \
  tests/test_sft.py tests/test_grpo.py tests/test_dagger.py tests/test_policies.py \
  -k "not two_cpu and not every_" > "$OUT/pytest.log" 2>&1
echo "pytest exit $? in $(( $(date +%s) - start )) s"; tail -n 25 "$OUT/pytest.log"
timeout 90 python3 benchmarks/sdpa_backends.py --out "$OUT/sdpa_backends.json"
start=$(date +%s)
timeout "${CHECK_SECONDS:-300}" python3 benchmarks/gpu_check.py --cases "${CASES:-5}" \
  --profile "$OUT/profile.txt" --out "$OUT/gpu_check.json" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check exit $? in $(( $(date +%s) - start )) s"; grep -v "^ " "$OUT/gpu_check.log" | tail -n 20
cat "$OUT/gpu_check.json" 2>/dev/null
