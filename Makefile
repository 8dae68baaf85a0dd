# The README's two commands: `make demo` and `make test`. Each sets up .venv first.
# `make show` / `make report` run datr from .venv on DIR (default: the demo's output), e.g.
# `make show DIR=runs/udd5-val ARGS="--width 100"`; or `source .venv/bin/activate` and call `datr` directly.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-out
DIR ?= $(DEMO_OUT)
ARGS ?=

.PHONY: setup demo show report test bench lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sam3-datr needs Python 3.11+ (run.toml is read with tomllib), $(PYTHON) is " + sys.version.split()[0] + ": run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,sam3,faiss,dask]'
	touch $@

setup: $(VENV)/.installed

# replaces an earlier $(DEMO_OUT) (datr demo says so); `make demo DEMO_OUT=other` keeps it
demo: setup
	$(VENV)/bin/datr demo --out $(DEMO_OUT)

show: setup
	$(VENV)/bin/datr show $(DIR) $(ARGS)

report: setup
	$(VENV)/bin/datr report $(DIR) $(ARGS)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/datr bench kernels --json bench-kernels.json

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_OUT)

# One-command GPU check (see DEVELOPERS.md "On a lent GPU"): installs the carried wheels
# offline when GPU_WHEELS holds any, then runs every GPU test and benchmark.
GPU_WHEELS ?= gpu-wheels
GPU_CHECK_OUT ?= gpu-check-out
GPU_PYTHON ?= python3

.PHONY: gpu-check gpu-wheels
gpu-check:
	@if ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1; then \
		$(GPU_PYTHON) -m pip install -q --no-index --no-deps --find-links $(GPU_WHEELS) -r gpu-requirements.txt; fi
	$(GPU_PYTHON) -m bench.gpu_check --out $(GPU_CHECK_OUT)

# Run where the network is: the wheels gpu-check needs beyond what the GPU machine has.
# GPU_PY_VERSION: the GPU machine's Python, e.g. 3.12 (binary wheels are per version).
gpu-wheels:
	@test -n "$(GPU_PY_VERSION)" || (echo 'make gpu-wheels GPU_PY_VERSION=3.X (the GPU machine'"'"'s python)'; exit 2)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --dest $(GPU_WHEELS) \
		--python-version $(GPU_PY_VERSION) --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
		--platform manylinux_2_17_x86_64 -r gpu-requirements.txt
	du -sh $(GPU_WHEELS)
