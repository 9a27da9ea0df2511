# llmforge: every target sets up what it needs (venv and Go-built binaries live in $(LLMFORGE_CACHE)).
SHELL := /bin/bash
LLMFORGE_CACHE ?= $(HOME)/.cache/llmforge
VENV ?= $(LLMFORGE_CACHE)/venv
PY := $(VENV)/bin/python
export LLMFORGE_CACHE
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HOME := $(LLMFORGE_CACHE)/hf

# images, setup-host, demo-node: the three images built here without Docker, and a real node (root only).
.PHONY: setup setup-all setup-python setup-k8s setup-host images demo-node test test-unit test-k8s test-ml test-vllm crds docs chart lint demo demo-kind cluster-up cluster-down bench

# The Go build is CPU-bound and the venv build network-bound: run them side by side.
setup:
	@$(MAKE) --no-print-directory -j2 setup-python setup-k8s

setup-python:
	@bash scripts/setup-python.sh

setup-k8s:
	@bash scripts/build-k8s.sh

# Everything the tests need: the venv, the Go-built control plane and node, and the images (built while the Go
# build runs: one is network- and disk-bound, the other CPU-bound).
setup-all:
	@$(MAKE) --no-print-directory -j3 setup-python setup-k8s images

setup-host:
	@bash scripts/setup-host.sh

# The trainer, server and operator images from their own Dockerfiles, on bases made here from Debian packages
# (no Docker, no registry): buildah, cached by content under $(LLMFORGE_CACHE)/images. Skipped with the reason
# where the machine cannot build them (not root), except under CI=true.
images: setup-python setup-host
	@$(PY) -m llmforge.devcluster.images build --if-possible

# All tiers. pytest's exit 5 (nothing collected) is a failure here, as it is any non-zero code.
test: setup-all
	@$(PY) -m pytest -p no:cacheprovider -q

test-unit: setup-python
	@$(PY) -m pytest -q -m "not k8s and not ml and not vllm"

test-k8s: setup
	@$(PY) -m pytest -q -m k8s

test-ml: setup-python
	@$(PY) -m pytest -q -m ml

test-vllm: setup-python
	@$(PY) -m pytest -q -m vllm

# CRDs from the API models, then everything derived from them (chart CRDs, values schema, argocd-cm,
# docs/api.md).
crds: setup-python
	@$(PY) -m llmforge.cli.main crds --out crds
	@$(PY) scripts/chartgen.py
	@$(PY) -m llmforge.cli.main docs --out docs/api.md

# docs/api.md from the API models (a test fails on drift).
docs: setup-python
	@$(PY) -m llmforge.cli.main docs --out docs/api.md

# The chart's generated files: crds/, values.schema.json, argocd/argocd-cm.yaml (a test fails on drift).
chart: setup-python
	@$(PY) scripts/chartgen.py

lint: setup-python
	@$(PY) -m ruff check operator trainer-image server-image tests bench scripts
	@$(VENV)/bin/hadolint operator/Dockerfile trainer-image/Dockerfile server-image/Dockerfile
	@$(VENV)/bin/shellcheck scripts/*.sh
	@$(VENV)/bin/lint-imports

cluster-up: setup
	@$(PY) -m llmforge.cli.main dev cluster up

cluster-down: setup-python
	@$(PY) -m llmforge.cli.main dev cluster down

demo: setup
	@$(PY) -m llmforge.devcluster.demo

# The same flow on a real node (containerd, runc, kubelet, kube-proxy) with the three images built here, in
# real containers. Needs root; changes iptables, sysctls and mounts while it runs and restores them after
# (docs/real-node.md). `make demo` touches none of that.
demo-node: setup-all
	@$(PY) -m llmforge.devcluster.nodedemo

# The same flow on a kind cluster with CPU builds of the three images and the Helm chart (needs Docker, kind,
# kubectl, helm; not runnable on the development machines, which have no Docker engine).
demo-kind:
	@bash scripts/demo-kind.sh

bench: setup
	@$(PY) bench/train_throughput.py
