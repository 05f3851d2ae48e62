#!/usr/bin/env bash
# Install the Debian packages pkiform's lab-host tests (tests/lab) need:
#   openssh-server  - sshd inside every lab host
#   etcd-server     - real etcd peers for end-to-end TLS checks
#   etcd-client     - etcdctl
#   sudo            - the non-root-with-sudo login path of the SSH transport
# Idempotent: packages already installed are left alone, apt is not touched at all when
# everything is present, and `apt-get update` runs only when apt knows no candidate for
# a missing package.  Installing starts no service on this machine (nothing runs systemd
# as PID 1 here); the lab hosts mask etcd and friends themselves.
set -euo pipefail

PACKAGES=(openssh-server etcd-server etcd-client sudo)
export DEBIAN_FRONTEND=noninteractive
# wait for another apt/dpkg run instead of failing on its lock
APT_OPTS=(-o DPkg::Lock::Timeout=300)

installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
    if installed "$pkg"; then
        echo "install-test-deps: $pkg already installed"
    else
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "install-test-deps: nothing to do"
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install-test-deps: must run as root to install: ${missing[*]}" >&2
    exit 1
fi

need_update=0
for pkg in "${missing[@]}"; do
    candidate="$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
        need_update=1
    fi
done
if ((need_update)); then
    echo "install-test-deps: apt knows no candidate for some packages, running apt-get update"
    apt-get "${APT_OPTS[@]}" update
fi

echo "install-test-deps: installing ${missing[*]}"
apt-get "${APT_OPTS[@]}" install -y "${missing[@]}"

for pkg in "${missing[@]}"; do
    if ! installed "$pkg"; then
        echo "install-test-deps: $pkg is still not installed" >&2
        exit 1
    fi
done
echo "install-test-deps: installed ${missing[*]}"
