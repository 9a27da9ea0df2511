"""The `llmforge` command line: validate, render, crds, operator, dev."""
