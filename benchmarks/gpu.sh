#!/usr/bin/env bash
# One call on the lent GPU: install, run the GPU test suite, run the benchmarks,
# print the tables last. Usage (repo root): bash benchmarks/gpu.sh [tests|bench|fwd|bwd|all]
#   tests: pytest -m gpu only; fwd: the forward benchmark only; bwd: the backward benchmark only;
#   bench: both benchmarks; dyntests: the dynamic/decode tests on CUDA tensors; dyn: those tests
#   and benchmarks/bench_dynamic.py (prefill with selection, train: forward + backward, decoding;
#   DYN_PARTS picks some); all (default): tests and
#   the forward and backward benchmarks; hf: the transformers integration's GPU tests and
#   benchmarks/bench_hf.py (prefill, decoding tokens/s and peak memory against sdpa and
#   flex_attention; HF_ARGS passes its arguments); sweep: benchmarks/tile_sweep.py with SWEEP_ARGS
#   (after the tests when SWEEP_TESTS=1).
# Environment: LENGTHS (default "16384 65536"), BENCH_ARGS (extra bench_forward.py arguments),
# BWD_ARGS (extra bench_backward.py arguments), VARLEN=0 skips the packed varlen rows of the
# backward benchmark, PYTEST_ARGS, OUT (default /tmp/sparsedsl-out).
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
case $what in
  tests|bench|fwd|bwd|dyn|dyntests|hf|sweep|all) ;;
  *) echo "usage: bash benchmarks/gpu.sh [tests|bench|fwd|bwd|dyn|dyntests|hf|sweep|all]" >&2; exit 2 ;;
esac
OUT=${OUT:-/tmp/sparsedsl-out}; mkdir -p "$OUT"
if [ -d .whl ]; then  # packages the GPU image lacks (lark; pytest-xdist), carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d .whl-hf ]; then  # transformers and its dependencies (benchmarks/gpu-wheels.sh hf), for the hf mode
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-hf \
    .whl-hf/*.whl && export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}/tmp/site-hf
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} SPARSEDSL_CACHE_DIR=/tmp/sparsedsl-cache PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
status=0
tables=()
# the kernels' compile time dominates the tests: spread them over processes when pytest-xdist is there
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n ${WORKERS:-8}")
if [ "$what" = tests ] || [ "$what" = all ] || [ "${SWEEP_TESTS:-0}" = 1 ]; then
  python3 -m pytest -q -m gpu -p no:cacheprovider ${workers:-} tests/test_kernels_gpu.py tests/test_backward_gpu.py ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/gpu_tests.txt" | tail -40
  status=${PIPESTATUS[0]}
fi
if [ "$what" = dyn ] || [ "$what" = dyntests ]; then
  python3 -m pytest -q -p no:cacheprovider ${workers:-} tests/test_dynamic.py tests/test_selection.py \
    tests/test_summaries.py ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/gpu_dyn_tests.txt" | tail -25
  status=${PIPESTATUS[0]}
fi
if [ "$what" = dyn ]; then
  for part in ${DYN_PARTS:-prefill train decode}; do
    t0=$SECONDS
    python3 benchmarks/bench_dynamic.py $part ${DYN_ARGS:-} --out "$OUT/bench_$part.md" >> "$OUT/bench_dyn.log" 2>&1
    echo "bench_dynamic.py $part: exit $?, $((SECONDS - t0)) s"
    grep "^L=\|failed" "$OUT/bench_dyn.log" | tail -n 8
    tables+=("$OUT/bench_$part.md")
  done
fi
if [ "$what" = hf ]; then  # (transformers: carry .whl-hf, from benchmarks/gpu-wheels.sh hf)
  python3 -m pytest -q -m gpu -p no:cacheprovider ${workers:-} tests/test_transformers_gpu.py tests/test_padded.py \
    ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/gpu_hf_tests.txt" | tail -15
  status=${PIPESTATUS[0]}
  # padded batches and left-padded decoding of dynamic patterns (CUDA tensors when there is a GPU)
  python3 -m pytest -q -p no:cacheprovider ${workers:-} tests/test_padded_dynamic.py ${PYTEST_ARGS:-} 2>&1 \
    | tee "$OUT/gpu_padded_dynamic_tests.txt" | tail -5
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  t0=$SECONDS
  python3 benchmarks/bench_hf.py ${HF_ARGS:-} --out "$OUT/bench_hf.md" >> "$OUT/bench_hf.log" 2>&1
  echo "bench_hf.py: exit $?, $((SECONDS - t0)) s"
  tables+=("$OUT/bench_hf.md")
fi
if [ "$what" = sweep ]; then
  python3 benchmarks/tile_sweep.py ${SWEEP_ARGS:-} 2>&1 | tee "$OUT/sweep.txt"
fi
# one process per length: FlexAttention's mask compile does not survive many shapes in one process
if [ "$what" = fwd ] || [ "$what" = bench ] || [ "$what" = all ]; then
  for L in ${LENGTHS:-16384 65536}; do
    rm -f "$OUT/bench_$L.md"
    python3 benchmarks/bench_forward.py --lengths "$L" ${BENCH_ARGS:-} --out "$OUT/bench_$L.md" >> "$OUT/bench.log" 2>&1
    grep "^L=" "$OUT/bench.log" | tail -n 7
    tables+=("$OUT/bench_$L.md")
  done
fi
if [ "$what" = bwd ] || [ "$what" = bench ] || [ "$what" = all ]; then
  for L in ${LENGTHS:-16384 65536}; do
    t0=$SECONDS; rm -f "$OUT/bench_bwd_$L.md"
    python3 benchmarks/bench_backward.py --lengths "$L" ${BWD_ARGS:-} --out "$OUT/bench_bwd_$L.md" \
      >> "$OUT/bench_bwd.log" 2>&1
    echo "bench_backward.py L=$L: exit $?, $((SECONDS - t0)) s (log: $OUT/bench_bwd.log)"
    grep "^L=" "$OUT/bench_bwd.log" | tail -n 7
    tables+=("$OUT/bench_bwd_$L.md")
  done
  if [ "${VARLEN:-1}" != 0 ]; then  # the packed varlen rows, in a process of their own
    t0=$SECONDS; rm -f "$OUT/bench_bwd_varlen.md"
    python3 benchmarks/bench_backward.py --varlen-only ${BWD_ARGS:-} --out "$OUT/bench_bwd_varlen.md" \
      >> "$OUT/bench_bwd.log" 2>&1
    echo "bench_backward.py --varlen-only: exit $?, $((SECONDS - t0)) s"
    grep "^varlen " "$OUT/bench_bwd.log" | tail -n 2
    tables+=("$OUT/bench_bwd_varlen.md")
  fi
fi
for f in ${tables[@]+"${tables[@]}"}; do
  if [ -f "$f" ]; then echo; cat "$f"; else echo "no table: $f"; fi
done
exit $status
