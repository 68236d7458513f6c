#!/usr/bin/env bash
# Install the real servers certd's tests start (tests/servers/): Pebble, HAProxy, nginx, BIND, PostgreSQL.
# Idempotent: only packages whose binary is missing are installed, and apt-get update runs only if needed.
# Run as root on Debian 12 (or derivatives).
set -euo pipefail

# binary (or glob) that proves the package is installed -> Debian package
checks=(
  "pebble:pebble"
  "pebble-challtestsrv:pebble"
  "haproxy:haproxy"
  "nginx:nginx-light"
  "named:bind9"
  "tsig-keygen:bind9"
  "named-checkconf:bind9-utils"
  "/usr/lib/postgresql/*/bin/initdb:postgresql"
)

have() {
  case "$1" in
    /*) compgen -G "$1" >/dev/null ;;
    *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] ;;
  esac
}

missing=()
for check in "${checks[@]}"; do
  bin="${check%%:*}" pkg="${check#*:}"
  if have "$bin"; then
    echo "ok:      $bin ($pkg)"
  else
    echo "missing: $bin -> will install $pkg"
    [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "all test servers installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "need root to install: ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "+ apt-get update"
apt-get update
echo "+ apt-get install -y ${missing[*]}"
apt-get install -y --no-install-recommends "${missing[@]}"
