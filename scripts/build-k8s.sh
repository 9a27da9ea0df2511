#!/usr/bin/env bash
# Build the local Kubernetes control plane used by the `k8s` test tier and `llmforge dev cluster`.
#
# No real kube-apiserver ships in PyPI, npm or Debian, so we compile one from Go modules:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (k8s.io/kubernetes)
#   kubelet, kube-proxy                                              (k8s.io/kubernetes: the real node)
#   containerd, containerd-shim-runc-v2, ctr                         (github.com/containerd/containerd/v2)
#   etcd                                                             (go.etcd.io/etcd/server/v3)
#   kwok                                                             (sigs.k8s.io/kwok, fake nodes)
#   helm                                                             (helm.sh/helm/v3)
# into one flat directory (the KUBEBUILDER_ASSETS layout):
#   ${LLMFORGE_CACHE:-~/.cache/llmforge}/k8s/<k8s-version>/
#
# Re-running is cheap: a component is rebuilt only when one of its binaries is missing or its version
# in the stamp file (versions.env) differs. If KUBEBUILDER_ASSETS already holds a component's binaries,
# that component is not built at all.
#
# Wrapper modules (go.mod files only) are generated under the cache dir, never in the repository.
# Go's module and build caches for this build live in $LLMFORGE_CACHE/k8s/go and are deleted after a
# successful build (peak ~6 GB, left: ~0.5 GB of binaries); LLMFORGE_KEEP_GO_CACHE=1 keeps them.
# Override versions with LLMFORGE_K8S_VERSION, LLMFORGE_ETCD_VERSION, LLMFORGE_KWOK_VERSION,
# LLMFORGE_HELM_VERSION. Prints the directory holding the binaries on its last line.
# Measured first build (2 cores, Go 1.26): ~20 CPU-min, 16 min wall on a quiet machine; peak disk
# ~6.3 GB, 463 MB kept. Details in docs/development.md.
set -euo pipefail

K8S_VERSION="${LLMFORGE_K8S_VERSION:-1.34.4}"
ETCD_VERSION="${LLMFORGE_ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${LLMFORGE_KWOK_VERSION:-0.7.0}"
HELM_VERSION="${LLMFORGE_HELM_VERSION:-3.22.0}"
# Debian's containerd 1.6 is older than Kubernetes 1.34 supports; 2.x builds from its Go module in ~75 s.
CONTAINERD_VERSION="${LLMFORGE_CONTAINERD_VERSION:-2.2.9}"

CACHE="${LLMFORGE_CACHE:-$HOME/.cache/llmforge}"
OUT="$CACHE/k8s/$K8S_VERSION"
SRC="$CACHE/k8s/src"
STAMP="$OUT/versions.env"

# Never let go fetch a different toolchain behind our back; vcs stamping needs a git checkout we lack.
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -buildvcs=false"
# Private caches: the ~6 GB they reach can be dropped afterwards without touching the user's own.
export GOMODCACHE="$CACHE/k8s/go/mod" GOCACHE="$CACHE/k8s/go/build"
GO_BUILD_FLAGS=(-trimpath)
START=$SECONDS

log() { printf '[build-k8s %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }

K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
CONTAINERD_BINS=(containerd containerd-shim-runc-v2 ctr)
ALL=(etcd kwok "${K8S_BINS[@]}" helm "${CONTAINERD_BINS[@]}")
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
  have=1
  for b in "${ALL[@]}"; do [[ -x "$KUBEBUILDER_ASSETS/$b" ]] || have=0; done
  if ((have)); then
    log "all binaries found in KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS; nothing to build"
    echo "$KUBEBUILDER_ASSETS"
    exit 0
  fi
fi

command -v go >/dev/null || { log "go is not on PATH (need Go >= 1.26 for helm 3.22)"; exit 1; }
mkdir -p "$OUT" "$SRC"
touch "$STAMP"

stamped() { grep -qx "$1=$2" "$STAMP"; }
stamp() {
  grep -v "^$1=" "$STAMP" >"$STAMP.tmp" || true
  echo "$1=$2" >>"$STAMP.tmp"
  mv "$STAMP.tmp" "$STAMP"
}

# needs_build COMPONENT VERSION BINARY...: true unless all binaries exist (here or in KUBEBUILDER_ASSETS)
needs_build() {
  local comp=$1 version=$2 b
  shift 2
  if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    local all=1
    for b in "$@"; do [[ -x "$KUBEBUILDER_ASSETS/$b" ]] || all=0; done
    if ((all)); then log "$comp: using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"; return 1; fi
  fi
  for b in "$@"; do
    [[ -x "$OUT/$b" ]] || { log "$comp: $b missing, building $version"; return 0; }
  done
  if ! stamped "$comp" "$version"; then log "$comp: version changed, building $version"; return 0; fi
  log "$comp $version: up to date"
  return 1
}

# new_wrapper DIR: an empty module whose only job is to pin dependencies for `go build`.
new_wrapper() {
  rm -rf "$1"
  mkdir -p "$1"
  printf 'module llmforge.local/k8s-wrapper\n\ngo 1.24.0\n' >"$1/go.mod"
}

build_kubernetes() {
  local v=$K8S_VERSION minor=${K8S_VERSION#*.}
  minor=${minor%%.*}
  local w="$SRC/kubernetes-$v" gomod
  new_wrapper "$w"
  cd "$w"
  log "kubernetes: fetching k8s.io/kubernetes@v$v go.mod"
  gomod=$(go mod download -json "k8s.io/kubernetes@v$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  # k8s.io/kubernetes requires its staging repos at v0.0.0 (its own replaces point into ./staging and
  # are ignored for a dependency), so map each one to the published v0.<minor>.<patch> tag.
  local staging
  staging=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod")
  [[ -n "$staging" ]] || { log "kubernetes: no staging modules found in $gomod"; exit 1; }
  # Keep k8s's own godebug defaults: they are part of how upstream builds these binaries.
  sed -i 's/^go .*/'"$(grep -m1 '^go ' "$gomod")"'/' go.mod
  grep '^godebug ' "$gomod" >>go.mod || true
  go mod edit -require="k8s.io/kubernetes@v$v"
  local m
  for m in $staging; do go mod edit -replace="$m=$m@v0.${v#1.}"; done
  log "kubernetes: $(wc -w <<<"$staging") staging modules replaced with v0.${v#1.}; building ${#K8S_BINS[@]} binaries (the long part)"
  local pkg=k8s.io/component-base/version cgo=k8s.io/client-go/pkg/version x=""
  for p in $pkg $cgo; do
    x+=" -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    x+=" -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  # One `go build` for all of them shares compiled packages (the node's kubelet and kube-proxy add ~1/3);
  # CGO off gives static binaries.
  CGO_ENABLED=0 go build -mod=mod "${GO_BUILD_FLAGS[@]}" -ldflags "-s -w$x" -o "$OUT/" \
    "${K8S_BINS[@]/#/k8s.io/kubernetes/cmd/}"
  stamp kubernetes "$v"
  log "kubernetes: done ($("$OUT/kube-apiserver" --version))"
}

build_etcd() {
  log "using $(go version)"
  local v=$ETCD_VERSION w="$SRC/etcd-$ETCD_VERSION"
  new_wrapper "$w"
  cd "$w"
  go mod edit -require="go.etcd.io/etcd/server/v3@v$v"
  log "etcd: building go.etcd.io/etcd/server/v3@v$v"
  # etcd's go.mod carries replace directives, so `go install pkg@version` refuses it; a wrapper works.
  CGO_ENABLED=0 go build -mod=mod "${GO_BUILD_FLAGS[@]}" -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
  stamp etcd "$v"
  log "etcd: done ($("$OUT/etcd" --version | head -1))"
}

build_kwok() {
  log "kwok: building sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
  CGO_ENABLED=0 GOBIN="$OUT" go install "${GO_BUILD_FLAGS[@]}" -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION"
  stamp kwok "$KWOK_VERSION"
  log "kwok: done ($("$OUT/kwok" --version 2>&1 | head -1))"
}

build_helm() {
  log "helm: building helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  CGO_ENABLED=0 GOBIN="$OUT" go install "${GO_BUILD_FLAGS[@]}" \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  stamp helm "$HELM_VERSION"
  log "helm: done ($("$OUT/helm" version --short))"
}

build_containerd() {
  local v=$CONTAINERD_VERSION w="$SRC/containerd-$CONTAINERD_VERSION"
  new_wrapper "$w"
  cd "$w"
  go mod edit -require="github.com/containerd/containerd/v2@v$v"
  log "containerd: building github.com/containerd/containerd/v2@v$v"
  CGO_ENABLED=0 go build -mod=mod "${GO_BUILD_FLAGS[@]}" -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=v$v" -o "$OUT/" \
    "${CONTAINERD_BINS[@]/#/github.com/containerd/containerd/v2/cmd/}"
  stamp containerd "$v"
  log "containerd: done ($("$OUT/containerd" --version))"
}

# Smallest first, so a failure in the big build still leaves the others usable.
built=0
if needs_build etcd "$ETCD_VERSION" etcd; then build_etcd; built=1; fi
if needs_build kwok "$KWOK_VERSION" kwok; then build_kwok; built=1; fi
if needs_build containerd "$CONTAINERD_VERSION" "${CONTAINERD_BINS[@]}"; then build_containerd; built=1; fi
if needs_build kubernetes "$K8S_VERSION" "${K8S_BINS[@]}"; then
  build_kubernetes
  built=1
fi
if needs_build helm "$HELM_VERSION" helm; then build_helm; built=1; fi

if ((built)) && [[ -z "${LLMFORGE_KEEP_GO_CACHE:-}" ]]; then
  log "removing Go caches in $CACHE/k8s/go ($(du -sh "$CACHE/k8s/go" | cut -f1))"
  go clean -modcache
  rm -rf "$CACHE/k8s/go" "$SRC"
fi

log "all components ready in $OUT ($(du -sh "$OUT" | cut -f1))"
echo "$OUT"
