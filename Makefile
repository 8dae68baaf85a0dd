# The README's two commands: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo-out

.PHONY: setup demo test bench lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "sam3-datr needs Python 3.11+ (run.toml is read with tomllib), $(PYTHON) is " + sys.version.split()[0] + ": run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,sam3,faiss,dask]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/datr demo --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(VENV)/bin/datr bench kernels --json bench-kernels.json

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_OUT)
