#!/usr/bin/env bash
# `make demo`: the article's setup on this machine. HAProxy at the edge (certificate from Pebble over ACME,
# or from certd's local CA when Pebble is not installed), two nginx backends (certificates from certd's local
# CA), the certd daemon rotating all three under a request loop; then a summary and `certd list`.
# Everything lives in ./var/demo and is stopped at the end, also on Ctrl-C.
#   DEMO_SECONDS=90     how long the traffic runs (each certificate rotates every ~15 s)
#   DEMO_EDGE=local-ca  use certd's local CA for the edge even if Pebble is installed
set -euo pipefail
cd "$(dirname "$0")/.."
sessions="var/demo/run/sessions"

# scripts/demo_lb.py stops everything it started itself, also when interrupted. This is the backstop for a
# helper that died without cleaning up (kill -9): every server ran in a session of its own, whose id
# (= the pid of the process started) is in $sessions; end whatever is still in those sessions.
leftovers() {
  [ -f "$sessions" ] || return 0
  local sid name
  while read -r sid name; do
    if pgrep -s "$sid" >/dev/null 2>&1; then
      echo "demo.sh: $name (session $sid) was still running: killing it" >&2
      pkill -KILL -s "$sid" || true
    fi
  done < <(tac "$sessions")   # newest first: the daemon before the servers it deploys to
}
trap leftovers EXIT
trap 'exit 130' INT TERM HUP

.venv/bin/python scripts/demo_lb.py --certd .venv/bin/certd
