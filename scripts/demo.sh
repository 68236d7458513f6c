#!/usr/bin/env bash
# `make demo`: issue an edge and a backend certificate from certd's local CA into ./var, then show them.
set -euo pipefail
cd "$(dirname "$0")/.."
CERTD_BIN=".venv/bin/certd"
CERTD="$CERTD_BIN -c deploy/demo/certd.toml"
mkdir -p var
echo "==> certd check-config"
$CERTD check-config
echo "==> certd renew --all   (first run issues both; later runs skip what is not due)"
$CERTD renew --all
echo "==> certd list"
$CERTD list
echo "==> files written for 'edge' (stable names are links into the current generation):"
ls -la var/certs/edge/
echo "==> certd bundle edge   (what a load balancer pins for these backends)"
$CERTD bundle edge --out var/local-ca-bundle.pem
echo "==> certd plan"
$CERTD plan
secs="${DEMO_SECONDS:-60}"
echo "==> certd run for ${secs}s: the daemon renews 'ticker' (20 s lifetime) on its own; Ctrl-C stops it early"
status=0
timeout -s TERM "$secs" $CERTD_BIN --log-level info -c deploy/demo/certd.toml run || status=$?
[ "$status" -eq 0 ] || [ "$status" -eq 124 ] || exit "$status"
echo "==> certd history ticker (newest first)"
$CERTD history ticker > var/history-ticker.txt
head -n 12 var/history-ticker.txt
echo "==> certd list"
$CERTD list
