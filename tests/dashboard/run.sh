#!/usr/bin/env bash
# End-to-end test of the browser dashboard against a RUNNING broker, in Debian's headless Chromium.
# Usage: tests/dashboard/run.sh MGMT_URL AMQP_URL SCREENSHOT.png
#        tests/dashboard/run.sh --script cluster.mjs ARGS...   (another script of this folder; its
#        arguments are its own, and its stdin is passed on)
# Installs playwright-core and amqplib (versions from tests/dashboard/package.json) from npm into
# ${WARREN_INTEROP_CACHE:-$HOME/.cache/warren-it}/dashboard, once. Chromium itself comes from
# Debian (/usr/bin/chromium, or $CHROMIUM; .ci/run installs it): Playwright downloads no browser.
# Prints PASS/FAIL lines and ends with 'N passed, M failed'; exits non-zero on any failure.
set -u
here=$(cd "$(dirname "$0")" && pwd)
script=e2e.mjs
if [ "${1:-}" = "--script" ]; then
  script=${2:-}
  shift 2 || true
fi
if [ ! -f "$here/$script" ] || { [ "$script" = e2e.mjs ] && [ $# -ne 3 ]; }; then
  echo "usage: $0 MGMT_URL AMQP_URL SCREENSHOT.png | $0 --script SCRIPT.mjs ARGS..." >&2
  echo "0 passed, 1 failed"
  exit 2
fi
cache=${WARREN_INTEROP_CACHE:-$HOME/.cache/warren-it}/dashboard
chromium=${CHROMIUM:-/usr/bin/chromium}
log="$cache/install.log"
fail() { echo "FAIL $1"; echo "0 passed, 1 failed"; exit 1; }

mkdir -p "$cache" || fail "cannot create $cache"
[ -x "$chromium" ] || fail "no Chromium at $chromium (apt-get install -y chromium)"
command -v node >/dev/null 2>&1 || fail "node is not installed"

# Install when the cache's package.json differs from ours or a module is missing.
if ! cmp -s "$here/package.json" "$cache/package.json" \
   || ! NODE_PATH="$cache/node_modules" node -e 'require("playwright-core"); require("amqplib")' >/dev/null 2>&1; then
  echo "installing playwright-core and amqplib into $cache/node_modules"
  cp "$here/package.json" "$cache/package.json"
  if ! (cd "$cache" && npm install --no-audit --no-fund --no-package-lock --loglevel=error) >"$log" 2>&1; then
    tail -n 40 "$log" | sed 's/^/#   /'
    fail "npm install of the dashboard test's packages (log: $log)"
  fi
fi

# Playwright would otherwise look for (and never download) a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
DASHBOARD_NODE_MODULES="$cache/node_modules" CHROMIUM="$chromium" \
  timeout -k 5 240 node "$here/$script" "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "FAIL the dashboard test timed out"
  echo "0 passed, 1 failed"
fi
exit "$rc"
