#!/usr/bin/env bash
# `make demo-kind`: the quickstart flow (train a tiny Llama with QLoRA on CPU, evaluate it against its base,
# serve it with vLLM, print a completion) on a kind cluster, with CPU builds of the three llmforge images and
# the operator installed by its Helm chart: the kubernetes runtime, real pods, no GPU.
#
# Needs Docker, kind, kubectl and helm on PATH, and roughly 4 CPUs / 12 GiB for the Docker VM. It cannot run
# on the development machines (no Docker engine there): `make demo` is the same flow without containers.
# tests/unit/test_demo_kind.py checks what can be checked without Docker (shellcheck, the chart values and
# manifests this script uses, the pinned images).
#
# Environment: CLUSTER (kind cluster name, default llmforge-demo), TIMEOUT (seconds to wait for the flow,
# default 1800), KEEP=1 to leave the cluster up afterwards (default: it stays up too; delete it with
# `kind delete cluster --name llmforge-demo`).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/scripts/demo-kind"
CLUSTER="${CLUSTER:-llmforge-demo}"
TIMEOUT="${TIMEOUT:-1800}"
NS=llmforge-demo

# Pinned: the kind node of kind v0.30.0 (Kubernetes 1.34, the version the tests run), the CPU bases.
KIND_NODE_IMAGE="kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a"
PYTHON_CPU_IMAGE="python:3.11.11-slim-bookworm"
VLLM_CPU_IMAGE="public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0"

# What this script builds and loads into kind; the chart is told these names below.
OPERATOR_IMAGE="llmforge/operator:0.1.0-cpu"
TRAINER_IMAGE="llmforge/trainer:0.1.0-cpu"
SERVER_IMAGE="llmforge/server:0.1.0-cpu"

say() { printf '\n==> %s\n' "$*"; }

for tool in docker kind kubectl helm curl; do
  command -v "$tool" >/dev/null || { echo "demo-kind needs $tool on PATH" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "demo-kind needs a running Docker engine" >&2; exit 1; }

say "1/7 kind cluster $CLUSTER ($KIND_NODE_IMAGE)"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --image "$KIND_NODE_IMAGE" --wait 180s
fi
KCTX="kind-$CLUSTER"
k() { kubectl --context "$KCTX" "$@"; }

say "2/7 building the CPU images"
cd "$ROOT"
docker build -f operator/Dockerfile -t "$OPERATOR_IMAGE" .
# The CUDA defaults swapped for a plain Python base; the Dockerfile installs torch's CPU wheel there.
docker build -f trainer-image/Dockerfile -t "$TRAINER_IMAGE" \
  --build-arg FLASH_ATTN=0 \
  --build-arg BUILDER_IMAGE="$PYTHON_CPU_IMAGE" \
  --build-arg RUNTIME_IMAGE="$PYTHON_CPU_IMAGE" .
docker build -f server-image/Dockerfile -t "$SERVER_IMAGE" \
  --build-arg VLLM_IMAGE="$VLLM_CPU_IMAGE" .

say "3/7 loading them into kind (never pulled: the node has them)"
for image in "$OPERATOR_IMAGE" "$TRAINER_IMAGE" "$SERVER_IMAGE"; do
  kind load docker-image --name "$CLUSTER" "$image"
done

say "4/7 fake GCS in the cluster, seeded with the tiny model and its data"
k apply -f "$HERE/storage.yaml"
# fake-gcs keeps objects in memory: a restart empties the bucket, so a second run trains afresh instead of
# resuming from the first run's checkpoints.
k -n "$NS" rollout restart deployment/fake-gcs
k -n "$NS" rollout status deployment/fake-gcs --timeout=300s
# A Job's pod template is immutable: seed with a new Job on every run.
k -n "$NS" delete job seed-quickstart --ignore-not-found --wait=true
k apply -f "$HERE/seed-job.yaml"
k -n "$NS" wait --for=condition=Complete job/seed-quickstart --timeout=900s
k -n "$NS" logs job/seed-quickstart --tail=5

say "5/7 the operator, from charts/llmforge"
helm upgrade --install llmforge "$ROOT/charts/llmforge" --kube-context "$KCTX" \
  --namespace llmforge-system --create-namespace --wait --timeout 5m \
  -f "$HERE/values.yaml" \
  --set operator.image.repository="${OPERATOR_IMAGE%:*}" \
  --set operator.image.tag="${OPERATOR_IMAGE##*:}" \
  --set operator.trainerImage="$TRAINER_IMAGE" \
  --set operator.serverImage="$SERVER_IMAGE"

say "6/7 the quickstart: FineTuneJob, Evaluation, ModelDeployment"
k delete -f "$HERE/quickstart.yaml" --ignore-not-found --wait=true
k apply -f "$HERE/quickstart.yaml"

phase() { k -n "$NS" get "$1" quickstart -o jsonpath='{.status.phase}' 2>/dev/null || true; }
deadline=$((SECONDS + TIMEOUT))
last=""
while :; do
  table="$(k -n "$NS" get llmforge 2>/dev/null | awk '{$NF=""; print}')"  # minus AGE: print on change
  if [[ "$table" != "$last" ]]; then
    printf '\n$ kubectl get llmforge -n %s   # t+%ss\n' "$NS" "$SECONDS"
    k -n "$NS" get llmforge
    last="$table"
  fi
  ftj="$(phase finetunejob)" ev="$(phase evaluation)" md="$(phase modeldeployment)"
  if [[ "$ftj" == Failed ]]; then
    echo "the FineTuneJob failed; see kubectl -n $NS describe finetunejob quickstart" >&2
    exit 1
  fi
  # As in `make demo`, a failed Evaluation (its quality gate) is a result to show, not an error of the demo.
  if [[ "$ftj" == Succeeded && ( "$ev" == Succeeded || "$ev" == Failed ) && "$md" == Ready ]]; then
    break
  fi
  if ((SECONDS > deadline)); then
    echo "timed out after ${TIMEOUT}s: finetunejob=$ftj evaluation=$ev modeldeployment=$md" >&2
    exit 1
  fi
  sleep 5
done

say "7/7 a completion from the served endpoint (the adapter \`quickstart\`)"
k -n "$NS" port-forward svc/quickstart 8000:8000 >/dev/null 2>&1 &
forward=$!
trap 'kill "$forward" 2>/dev/null || true' EXIT
for _ in $(seq 30); do
  curl -fsS http://127.0.0.1:8000/v1/models >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model": "quickstart", "messages": [{"role": "user", "content": "What sound does a cat make?"}],
       "max_tokens": 24, "temperature": 0}'
echo
echo "kind cluster $CLUSTER is still up; remove it with: kind delete cluster --name $CLUSTER"
