#!/usr/bin/env bash
# Install the Debian packages certd needs, only those missing. Idempotent.
#   install-system-deps.sh python  -> python3-venv (for `make demo` on a fresh machine)
#   install-system-deps.sh demo    -> what `make demo` runs: haproxy, nginx-light, and pebble if the archive has it
#                                     (without Pebble the demo's edge certificate comes from certd's local CA)
#   install-system-deps.sh test    -> the real servers the tests run: pebble, haproxy, nginx, bind9, postgresql
#   install-system-deps.sh bench   -> what bench/acme_throughput.py compares certd with: pebble, certbot, lego
set -euo pipefail

want=()
optional=()
case "${1:-test}" in
  python)
    "${PYTHON:-python3}" -m venv --help >/dev/null 2>&1 || want+=(python3-venv)
    ;;
  demo)
    command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || want+=(haproxy)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || want+=(nginx-light)
    command -v pebble >/dev/null || optional+=(pebble)
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
  *) echo "usage: $0 python|demo|test|bench" >&2; exit 2 ;;
esac

[ ${#want[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${want[*]} ${optional[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    [ ${#want[@]} -eq 0 ] && { echo "not installing ${optional[*]}: need root (or sudo)" >&2; exit 0; }
    echo "need root (or sudo) to install: ${want[*]}" >&2; exit 1
  fi
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
[ ${#want[@]} -eq 0 ] || $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
# Nice to have: a machine whose archive lacks one of these still gets the rest.
for pkg in "${optional[@]}"; do
  $SUDO apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null || echo "could not install $pkg: going on without it" >&2
done
