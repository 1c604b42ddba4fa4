#!/usr/bin/env bash
# Installs and configures what berth builds and runs with (Debian/Ubuntu):
# protoc and libclang for the build; Podman with the runc runtime and a
# static busybox for sandboxes and the locally built demo images; libfaketime
# for the chaos suite's clock jumps; Python's grpcio for the Python client
# test. Starts the
# Podman API service if it is not running. Idempotent. Needs root (or sudo).
set -euo pipefail

packages=(protobuf-compiler libclang-dev clang podman runc busybox-static uidmap curl libfaketime prometheus)

SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }

# Python packages the tests use, for the python3 on PATH (a pyenv one has
# pip; Debian's may need python3-pip and leave to install beside its own
# packages): grpcio for the Python client test (clients/python), and
# kubernetes-validate for the kube driver's schema checks (deploy/).
root="$(cd "$(dirname "$0")/.." && pwd)"
if ! python3 -c "import grpc, grpc_tools" >/dev/null 2>&1 || ! command -v kubernetes-validate >/dev/null; then
  echo "setup: installing the Python packages the tests use" >&2
  if ! python3 -m pip --version >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  pip=(python3 -m pip install --quiet --disable-pip-version-check
       -r "$root/clients/python/requirements.txt" -r "$root/deploy/requirements.txt")
  "${pip[@]}" 2>/dev/null || "${pip[@]}" --break-system-packages
fi

# crun fails on hybrid cgroup hosts ("cgroups in hybrid mode not supported"):
# use runc for every podman command and for the API service.
conf=/etc/containers/containers.conf.d/50-berth-runc.conf
if [[ ! -f $conf ]]; then
  $SUDO mkdir -p "$(dirname "$conf")"
  printf '[engine]\nruntime = "runc"\n' | $SUDO tee "$conf" >/dev/null
fi

# The Docker-compatible API that berth-agent's container driver talks to.
sock=/run/podman/podman.sock
if ! curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; then
  $SUDO mkdir -p /run/podman
  $SUDO rm -f "$sock"
  # Started from /: the service outlives this checkout, and conmon fails
  # every container start ("Failed to get working directory", seen by the
  # agent as "write child: broken pipe") once its directory is deleted.
  (cd / && nohup $SUDO podman --runtime /usr/sbin/runc system service --time=0 "unix://$sock" \
    >/tmp/berth-podman-service.log 2>&1 &)
  for _ in $(seq 1 50); do
    curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -sf --unix-socket "$sock" http://d/_ping >/dev/null || { echo "setup: podman API service did not start (see /tmp/berth-podman-service.log)" >&2; exit 1; }
fi
