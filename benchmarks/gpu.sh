#!/usr/bin/env bash
# One call on the lent GPU: install, run the GPU test suite, run the benchmark,
# print the table last. Usage (repo root): bash benchmarks/gpu.sh [tests|bench|all]
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
OUT=${OUT:-/tmp/sparsedsl-out}; mkdir -p "$OUT"
if [ -d .whl ]; then  # packages the GPU image lacks (lark), carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} SPARSEDSL_CACHE_DIR=/tmp/sparsedsl-cache PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
status=0
if [ "$what" != bench ]; then
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels_gpu.py ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/gpu_tests.txt" | tail -40
  status=${PIPESTATUS[0]}
fi
if [ "$what" != tests ]; then
  # one process per length: FlexAttention's mask compile does not survive many shapes in one process
  for L in ${LENGTHS:-16384 65536}; do
    python3 benchmarks/bench_forward.py --lengths "$L" ${BENCH_ARGS:-} --out "$OUT/bench_$L.md" >> "$OUT/bench.log" 2>&1
    grep "^L=" "$OUT/bench.log" | tail -n 7
  done
  cat "$OUT"/bench_*.md
fi
exit $status
