#!/usr/bin/env bash
# Debian packages the image builds and the real node need: buildah and mmdebstrap (images without Docker or a
# registry); runc, the CNI plugins, iptables, nftables, conntrack, iproute2, gcc and openssl for the node
# (containerd, kubelet and kube-proxy themselves are built from Go modules by build-k8s.sh); busybox-static
# (the node tests' tiny image). Installs only what is missing, and only
# as root: elsewhere it says what is missing and exits 0, and the container and real-node test tiers skip with
# that reason (never under CI=true, where they fail instead).
set -euo pipefail
PACKAGES=(buildah mmdebstrap runc containernetworking-plugins iptables nftables conntrack iproute2 gcc libc6-dev openssl
  busybox-static uidmap)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "setup-host: not root or no apt-get; missing ${missing[*]} (the image and real-node tiers will skip)" >&2
  exit 0
fi
echo "setup-host: apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
