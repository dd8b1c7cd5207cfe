#!/bin/bash
# gpuburst: joins this machine to the private Kubernetes cluster as a burst GPU node.
# Rendered by stacks/bootstrap (values below are shell-quoted there); cloud-init runs it once, as root.
# It never traces its commands: the join token must not reach the console log.
set -euo pipefail

readonly NODE_NAME=@@node_name
readonly NODE_LABELS=@@node_labels
readonly NODE_TAINTS=@@node_taints
readonly KUBERNETES_MINOR=@@kubernetes_minor
readonly KUBEADM_API=@@kubeadm_api
readonly JOIN_SECRET_ARN=@@join_secret_arn

readonly HELPER=/usr/local/lib/gpuburst/join_config.py
readonly JOIN_CONFIG=/etc/kubernetes/gpuburst-join.yaml
readonly CRI_SOCKET=unix:///run/containerd/containerd.sock
readonly KEYRING=/etc/apt/keyrings/kubernetes-apt-keyring.gpg
readonly K8S_REPO="https://pkgs.k8s.io/core:/stable:/v${KUBERNETES_MINOR}/deb/"
export DEBIAN_FRONTEND=noninteractive
# Waits for the image's own apt runs at boot (unattended-upgrades) instead of failing on their lock.
readonly APT=(apt-get -q -y -o DPkg::Lock::Timeout=600 -o Acquire::Retries=5)

log() { printf 'gpuburst-join: %s\n' "$*"; }
fail() {
  log "$*"
  exit 1
}

log "node ${NODE_NAME}: Kubernetes ${KUBERNETES_MINOR}, labels ${NODE_LABELS}, taints ${NODE_TAINTS}"
hostnamectl set-hostname "${NODE_NAME}"

# The image must bring the GPU stack: without it the node would join and never offer nvidia.com/gpu.
for tool in nvidia-smi nvidia-ctk python3 systemctl; do
  command -v "${tool}" >/dev/null || fail "the node image has no ${tool}: use a GPU image with the NVIDIA driver and container toolkit"
done

# What kubeadm's preflight checks and pod networking need from the kernel.
swapoff -a
printf '%s\n' overlay br_netfilter >/etc/modules-load.d/kubernetes.conf
modprobe overlay
modprobe br_netfilter
cat >/etc/sysctl.d/99-kubernetes.conf <<'SYSCTL'
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
SYSCTL
sysctl --system >/dev/null

"${APT[@]}" update
"${APT[@]}" install apt-transport-https ca-certificates curl gpg
command -v containerd >/dev/null || "${APT[@]}" install containerd
python3 -c 'import boto3' 2>/dev/null || "${APT[@]}" install python3-boto3

# containerd with its CRI plugin on (Docker's package turns it off), systemd cgroups like the kubelet,
# and the NVIDIA runtime as the default, so GPU pods need no RuntimeClass.
mkdir -p /etc/containerd
containerd config default >/etc/containerd/config.toml
sed -i 's/SystemdCgroup = false/SystemdCgroup = true/' /etc/containerd/config.toml
grep -q 'SystemdCgroup = true' /etc/containerd/config.toml || fail "containerd's config has no SystemdCgroup switch"
nvidia-ctk runtime configure --runtime=containerd --set-as-default
systemctl enable containerd
systemctl restart containerd

# kubelet, kubeadm and kubectl from the Kubernetes project's repository of exactly this minor version,
# held there: the kubelet must never run ahead of the cluster's API server.
install -d -m 0755 /etc/apt/keyrings
curl -fsSL --retry 5 "${K8S_REPO}Release.key" | gpg --batch --yes --dearmor -o "${KEYRING}"
printf 'deb [signed-by=%s] %s /\n' "${KEYRING}" "${K8S_REPO}" >/etc/apt/sources.list.d/kubernetes.list
"${APT[@]}" update
"${APT[@]}" install kubelet kubeadm kubectl
apt-mark hold kubelet kubeadm kubectl
installed=$(kubeadm version -o short)
[[ ${installed} == "v${KUBERNETES_MINOR}."* ]] || fail "kubeadm is ${installed}, not ${KUBERNETES_MINOR}"

# The pool's labels and taint, registered by the kubelet itself: the node is never schedulable without them.
printf 'KUBELET_EXTRA_ARGS=--node-labels=%s --register-with-taints=%s\n' "${NODE_LABELS}" "${NODE_TAINTS}" >/etc/default/kubelet
systemctl enable kubelet

# The join token: read from Secrets Manager with the instance role into a root-only file that kubeadm
# reads (never a command-line flag, so it is not in the process list), removed however the join ends.
install -d -m 0755 "$(dirname "${HELPER}")" /etc/kubernetes
cat >"${HELPER}" <<'PY'
@@join_config_py
PY
trap 'rm -f "${JOIN_CONFIG}"' EXIT
umask 077
python3 "${HELPER}" --secret-arn "${JOIN_SECRET_ARN}" --node-name "${NODE_NAME}" --api-version "${KUBEADM_API}" \
  --cri-socket "${CRI_SOCKET}" --out "${JOIN_CONFIG}"
kubeadm join --config "${JOIN_CONFIG}"
log "joined as ${NODE_NAME}"
