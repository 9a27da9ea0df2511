"""llmforge_server: the serving image's code. `llmforge-serve` (serve.py) fetches weights and execs the real
vLLM OpenAI server with arguments from args.py; usage.py is the per-variant usage and cost middleware
vLLM loads through --middleware. Imports llmforge.api (the contract) and nothing else of the operator."""
