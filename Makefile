# Two commands set everything up on a fresh machine:
#   make demo   install, then compile a shipped pattern, draw it and check attention against the dense reference
#   make test   install, then run the test suite (what CI runs; README: how long it takes)
#   make test-long   the same plus the slow property runs (more hypothesis examples)
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install demo test test-long

# A CPU torch is installed only when no torch is there, so a GPU user keeps theirs
# (a bare "torch" requirement would pull a multi-GB CUDA build).
install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) "torch==2.13.0"
	@$(PIP) -e ".[test]"

demo: install
	$(PYTHON) -m sparsedsl demo

# the kernel tests are CPU-bound (Triton's interpreter): one worker per core
test: install
	$(PYTHON) -m pytest -q -n auto

test-long: install
	HYPOTHESIS_PROFILE=long $(PYTHON) -m pytest -q -n auto -m "not gpu"
