"""What the trainer image runs: QLoRA fine-tuning (`llmforge-train`) and evaluation (`llmforge-eval`)."""
