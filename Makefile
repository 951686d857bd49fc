# `make demo` and `make test` each create (or reuse) the virtual environment in .venv.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_INSTALLED := $(VENV)/.installed-demo
SYSTEM_PYTHON ?= python3

.PHONY: venv demo test lint bench bench-methods bench-layers clean

# nnU-Net (for its results folders and their tests) goes in without its declared dependencies,
# which would replace PyTorch: see requirements-nnunet.txt.
$(INSTALLED): pyproject.toml constraints.txt requirements-nnunet.txt
	test -x $(PYTHON) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -c constraints.txt -e ".[dev,nnunet,bundle,cohort,cluster]"
	$(PYTHON) -m pip install --quiet --no-deps -c constraints.txt -r requirements-nnunet.txt
	touch $(INSTALLED)

# The demo needs only the package's own dependencies (PyTorch, MONAI, SimpleITK, SciPy,
# Matplotlib), not the test, cohort, Ray, nnU-Net and Slicer extras.
$(DEMO_INSTALLED): pyproject.toml constraints.txt
	test -x $(PYTHON) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -c constraints.txt -e .
	touch $(DEMO_INSTALLED)

venv: $(INSTALLED)

demo: $(DEMO_INSTALLED)
	$(VENV)/bin/seghiresgradcam demo --out demo_output

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PYTHON) -m pytest -q

bench: $(INSTALLED)
	$(PYTHON) bench/bench_engine.py

bench-methods: $(INSTALLED)
	$(PYTHON) bench/bench_methods.py --cases 20

bench-layers: $(INSTALLED)
	cd Utilities && ../$(PYTHON) train_layer_study_models.py
	$(PYTHON) bench/bench_layers.py --cases 20

clean:
	rm -rf $(VENV) demo_output
