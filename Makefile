# The README's two commands: `make demo` and `make test`. Each sets up .venv first.
# `make show` / `make report` run datr from .venv on DIR (default: the demo's output), e.g.
# `make show DIR=runs/udd5-val ARGS="--width 100"`; or `source .venv/bin/activate` and call `datr` directly.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-out
DIR ?= $(DEMO_OUT)
ARGS ?=

.PHONY: setup demo show report test test-fast bench lint clean

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

# one worker per core, at most 4 (each test pins one thread); worksteal keeps the long tests from ending last
test: setup
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal

# the inner loop: everything but the slow tests (Dask clusters, the GPU check's quick run, subprocess-heavy runs)
test-fast: setup
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal -m 'not slow'

bench: setup
	$(VENV)/bin/datr bench kernels --json bench-kernels.json

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_OUT)

# One-command GPU check (see DEVELOPERS.md "On a lent GPU"). On the GPU machine: install, offline
# and without dependencies, only the carried wheels of packages the machine lacks (its torch,
# torchvision and numpy stay as they are), then run every GPU test and benchmark.
GPU_WHEELS ?= gpu-wheels
GPU_CHECK_OUT ?= gpu-check-out
GPU_PYTHON ?= python3
GPU_PY_VERSION ?= 3.12

.PHONY: gpu-check gpu-wheels
gpu-check:
	$(GPU_PYTHON) -m bench.gpu_wheels install --wheels $(GPU_WHEELS)
	$(GPU_PYTHON) -m bench.gpu_check --out $(GPU_CHECK_OUT)

# Run where the network is: the wheels of gpu-requirements.txt for the GPU machine's Python
# (GPU_PY_VERSION, binary wheels are per version; manylinux x86_64), into GPU_WHEELS (git-ignored).
gpu-wheels:
	$(PYTHON) -m bench.gpu_wheels download --dest $(GPU_WHEELS) --python-version $(GPU_PY_VERSION)
