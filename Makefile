# `make demo` and `make test` each create (or reuse) the virtual environment in .venv.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_INSTALLED := $(VENV)/.installed-demo
SYSTEM_PYTHON ?= python3

.PHONY: venv demo test test-quick test-seconds test-oldest lint bench bench-methods bench-layers clean

# nnU-Net (for its results folders and their tests) goes in without its declared dependencies,
# which would replace PyTorch: see requirements-nnunet.txt.
$(INSTALLED): pyproject.toml constraints.txt requirements-nnunet.txt SegHiResGradCAM/SegHiResGradCAMLib/requirements.txt
	test -x $(PYTHON) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -c constraints.txt -e ".[dev,nnunet,bundle,cohort,cluster,segmentation,training,torchio]"
	$(PYTHON) -m pip install --quiet --no-deps -c constraints.txt -r requirements-nnunet.txt
	touch $(INSTALLED)

# The demo needs only the package's own dependencies (PyTorch, MONAI, SimpleITK, SciPy,
# Matplotlib), not the test, cohort, Ray, nnU-Net and Slicer extras.
$(DEMO_INSTALLED): pyproject.toml constraints.txt SegHiResGradCAM/SegHiResGradCAMLib/requirements.txt
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
	$(VENV)/bin/mypy
	$(VENV)/bin/codespell $$(git ls-files 2>/dev/null || echo .)

# In TEST_PROCESSES processes (pytest-xdist; one per core of a 2-core machine), each file's
# tests in one of them: a file's module fixtures (trained networks, cohorts, the nnU-Net
# folder) are made once and its Ray tests run one after another (the two cohort files' may overlap).
# Files are handed out longest first (Testing/file_seconds.json), so both processes end together.
TEST_PROCESSES ?= 2
PYTEST := $(PYTHON) -m pytest -q -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder
test: lint
	$(PYTEST)

# Measures each test file's seconds again, for the order above (after adding a long file).
test-seconds: $(INSTALLED)
	$(PYTEST) --record-file-seconds

# The quick loop while editing (under 3 minutes on 2 cores): no slow, nnU-Net, Ray or Slicer
# tests; `make test` (and CI) runs everything.
test-quick: $(INSTALLED)
	$(PYTEST) -m "not slow and not nnunet and not ray and not slicer"

# The lowest declared versions (requirements.txt's minimums, pinned) and the quick tests; not
# part of `make test` (another 1.5 GB environment).
OLDEST := .venv-oldest
test-oldest:
	test -x $(OLDEST)/bin/python || $(SYSTEM_PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	sed -n 's/^\([A-Za-z0-9_.-]*\)>=/\1==/p' SegHiResGradCAM/SegHiResGradCAMLib/requirements.txt > $(OLDEST)/oldest.txt
	$(OLDEST)/bin/python -m pip install --quiet -c $(OLDEST)/oldest.txt -e ".[dev]"
	$(OLDEST)/bin/python -m pytest -q Testing/cam Testing/volumes Testing/test_signed_map.py Testing/test_evidence.py

bench: $(INSTALLED)
	$(PYTHON) bench/bench_engine.py

bench-methods: $(INSTALLED)
	$(PYTHON) bench/bench_methods.py --cases 20

bench-layers: $(INSTALLED)
	cd Utilities && ../$(PYTHON) train_layer_study_models.py
	$(PYTHON) bench/bench_layers.py --cases 20

clean:
	rm -rf $(VENV) $(OLDEST) demo_output
