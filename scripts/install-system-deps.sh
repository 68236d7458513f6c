#!/usr/bin/env bash
# Install the Debian packages certd needs, only those missing. Idempotent.
#   install-system-deps.sh python  -> python3-venv (for `make demo` on a fresh machine)
#   install-system-deps.sh test    -> the real servers the tests run: pebble, haproxy, nginx, bind9, postgresql
#   install-system-deps.sh bench   -> what bench/acme_throughput.py compares certd with: pebble, certbot, lego
set -euo pipefail

want=()
case "${1:-test}" in
  python)
    "${PYTHON:-python3}" -m venv --help >/dev/null 2>&1 || want+=(python3-venv)
    ;;
  test)
    command -v pebble >/dev/null || want+=(pebble)
    command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || want+=(haproxy)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || want+=(nginx-light)
    command -v named >/dev/null || [ -x /usr/sbin/named ] || want+=(bind9)
    command -v tsig-keygen >/dev/null || [ -x /usr/sbin/tsig-keygen ] || want+=(bind9-utils)
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || want+=(postgresql)
    ;;
  bench)
    command -v pebble >/dev/null || want+=(pebble)
    command -v certbot >/dev/null || want+=(certbot)
    command -v lego >/dev/null || want+=(lego)
    ;;
  *) echo "usage: $0 python|test|bench" >&2; exit 2 ;;
esac

[ ${#want[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${want[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${want[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
