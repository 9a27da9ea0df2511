# torch-base: the local stand-in for a torch base image where no registry is reachable (llmforge.devcluster.images).
# PyPI's torch for Linux is the CUDA build (it brings the CUDA libraries and runs on CPU); PyTorch's own CPU
# index is not reachable here. The trainer (RUNTIME_IMAGE) and the vLLM CPU stand-in both start from it, so the
# ~5 GB torch layer is stored, exported and imported once.
ARG BASE_IMAGE=localhost/llmforge/python-base:bookworm
FROM ${BASE_IMAGE}
ARG TORCH_VERSION=2.13.0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && python -c 'import torch; print("torch", torch.__version__)'
