# QLASS notebook project. On a fresh Linux machine with Python 3.11 and Java 17:
#   make run    # the whole notebook series on the embedded default (offline)
#   make test   # unit tests + a smoke run of the series
# Both create .venv on first use. GPU users: make TORCH_SPEC="torch==2.5.1" (or any CUDA build) run

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PARAMS ?= params/default.yaml
PYTEST_ARGS ?=

.PHONY: run test unit smoke venv browser notebooks lab clean-runs self-training annotations

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet wheel setuptools
	# ALFWorld's textworld[pddl] needs fast-downward-textworld, which only builds without build isolation
	$(PY) -m pip install --quiet --no-build-isolation fast-downward-textworld
	$(PY) -m pip install --quiet -e ".[dev,alfworld]"
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) -m qlass_lib run $(PARAMS)

# Stage 06 (QLASS-ST, RFT, the process-reward self-training comparison) on top of the finished run of $(PARAMS)
self-training: venv
	$(PY) -m qlass_lib run $(PARAMS) --set self_training.enabled=true

# Fewer annotations: the series once per share of the expert data, one table (runs/<run_id>-annotations/)
annotations: venv
	$(PY) -m qlass_lib annotations $(PARAMS) --fractions 1 0.5 0.25

# Debian's Chromium for the tree inspector's browser test (Playwright drives it; no browser download)
browser:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
		|| echo "note: could not install chromium (needs root and apt); the inspector's browser test will be skipped"

test: venv browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest -q -m "not smoke" $(PYTEST_ARGS)

smoke: venv
	$(PY) -m pytest -q -m smoke $(PYTEST_ARGS)

lab: venv
	$(VENV)/bin/jupyter lab notebooks/

notebooks: venv
	$(VENV)/bin/jupytext --sync notebooks/0*.ipynb

clean-runs:
	rm -rf runs/
