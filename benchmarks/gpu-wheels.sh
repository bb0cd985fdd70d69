#!/usr/bin/env bash
# Fetch, on this machine (which reaches the package registries), the wheels the lent GPU
# (Python 3.12, torch and triton installed, no network) lacks; benchmarks/gpu.sh installs them.
#   .whl/     lark, pytest-xdist, execnet                 (every mode)
#   .whl-hf/  transformers and its dependencies           (gpu.sh hf; carry it as well)
# Usage (repo root): bash benchmarks/gpu-wheels.sh [hf]
set -euo pipefail
cd "$(dirname "$0")/.."
get() {  # get DIR PACKAGE...
  local dir=$1; shift
  mkdir -p "$dir"
  python3 -m pip download -q --dest "$dir" --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 "$@"
}
get .whl --no-deps lark==1.2.2 pytest-xdist==3.8.0 execnet==2.1.2
if [ "${1:-}" = hf ]; then
  get .whl-hf "transformers>=5.0,<6"
  # what the GPU image has already (with torch), or does not need to import transformers
  rm -f .whl-hf/numpy-* .whl-hf/filelock-* .whl-hf/fsspec-* .whl-hf/typing_extensions-* .whl-hf/hf_xet-*
fi
du -sh .whl ${1:+.whl-hf}
