#!/usr/bin/env bash
# Installs what pyslicer needs on Debian 12 (as root), then runs it:
#   bash scripts/bootstrap.sh up [CONFIG.yaml] [--data-dir DIR]   the daemon (`slicer up`)
#   bash scripts/bootstrap.sh test [PYTEST ARGS]                    lint, type-check and the whole test suite
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${PYSLICER_VENV:-$ROOT/.venv}
APT_PACKAGES=(qemu-system-x86 qemu-utils debootstrap e2fsprogs busybox-static cpio kmod lz4 iproute2 nftables
              openssh-client python3 python3-venv ca-certificates)

if [ "$(id -u)" != 0 ]; then
    echo "bootstrap: run as root (VMs need /dev/kvm or TCG, taps and debootstrap)" >&2
    exit 1
fi

missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# debootstrap and apt-cache need fresh package lists to find the kernel and bookworm's packages.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -print -quit 2>/dev/null)" ]; then
    apt-get update -qq
fi

PYTHON=${PYSLICER_PYTHON:-/usr/bin/python3}
[ -x "$PYTHON" ] || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test]"

command=${1:-up}
shift || true
case "$command" in
    up)
        exec "$VENV/bin/slicer" up "$@"
        ;;
    test)
        echo "bootstrap: ruff"
        "$VENV/bin/ruff" check src tests bench scripts
        "$VENV/bin/ruff" format --check src tests bench scripts
        echo "bootstrap: mypy"
        "$VENV/bin/mypy"
        echo "bootstrap: import contracts"
        "$VENV/bin/lint-imports" --no-cache
        echo "bootstrap: the sync client is generated from the async one"
        "$VENV/bin/python" scripts/unasync.py --check
        echo "bootstrap: pytest"
        set +e
        "$VENV/bin/pytest" "$@"
        status=$?
        set -e
        if [ "$status" = 5 ]; then
            echo "bootstrap: pytest collected no tests; that is a failure" >&2
            exit 1
        fi
        exit "$status"
        ;;
    *)
        echo "usage: bash scripts/bootstrap.sh up|test [ARGS...]" >&2
        exit 2
        ;;
esac
