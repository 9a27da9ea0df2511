"""llmforge: a Kubernetes operator for QLoRA fine-tuning, evaluation and vLLM serving on GKE."""

__version__ = "0.1.0"
GROUP = "llmforge.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
