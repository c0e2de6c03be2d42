#!/usr/bin/env bash
# Black-box interop checks against a RUNNING AMQP 0-9-1 broker: pika and aio-pika (Python), amqplib (Node),
# Celery.
# Usage: tests/interop/run.sh [AMQP_URL]   (default $AMQP_URL, else amqp://guest:guest@127.0.0.1:5672/%2f)
# Installs its clients from PyPI and npm into a cache outside the repo
# (${WARREN_INTEROP_CACHE:-$HOME/.cache/warren-it}: venv/ and node_modules/), once.
# Prints every suite's PASS/FAIL lines and ends with one line 'N passed, M failed' summed over the suites;
# exits non-zero if any check failed or a suite did not finish.
set -u
here=$(cd "$(dirname "$0")" && pwd)
url=${1:-${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}}
cache=${WARREN_INTEROP_CACHE:-$HOME/.cache/warren-it}
py_reqs=('pika>=1.3,<2' 'celery>=5.3,<6' 'aio-pika>=10.2,<11')
js_req='amqplib@0.10'
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ beside the scripts
mkdir -p "$cache" || { echo "cannot create $cache"; echo "0 passed, 1 failed"; exit 1; }
log="$cache/install.log"
: >"$log"

passed=0
failed=0
note_fail() { echo "FAIL $1"; failed=$((failed + 1)); }

# ------------------------------------------------------------------------------------------ install
install_python() {
  local venv="$cache/venv" stamp="$cache/venv/.warren-reqs"
  if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$venv"
    "${PYTHON3:-python3}" -m venv "$venv" >>"$log" 2>&1 || return 1
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" = "${py_reqs[*]}" ] && "$venv/bin/python" -c 'import pika, celery, aio_pika' >/dev/null 2>&1; then
    return 0
  fi
  echo "installing ${py_reqs[*]} into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "${py_reqs[@]}" >>"$log" 2>&1 || return 1
  "$venv/bin/python" -c 'import pika, celery, aio_pika' >>"$log" 2>&1 || return 1
  echo "${py_reqs[*]}" >"$stamp"
}

install_node() {
  command -v node >/dev/null 2>&1 || { echo "node is not installed" >>"$log"; return 1; }
  if NODE_PATH="$cache/node_modules" node -e \
      'process.exit(/^0\.10\./.test(require("amqplib/package.json").version) ? 0 : 1)' >/dev/null 2>&1; then
    return 0
  fi
  echo "installing $js_req into $cache/node_modules"
  # a package.json of its own, so npm installs here and not into some parent folder's project
  [ -f "$cache/package.json" ] || echo '{"name": "warren-interop-cache", "private": true}' >"$cache/package.json"
  (cd "$cache" && npm install --prefix "$cache" --no-audit --no-fund --loglevel=error "$js_req") >>"$log" 2>&1
}

show_log() { echo "# install log ($log), last 40 lines:"; tail -n 40 "$log" | sed 's/^/#   /'; }

py_ok=yes; js_ok=yes
install_python || { py_ok=no; show_log; }
install_node || { js_ok=no; show_log; }

# ------------------------------------------------------------------------------------------- suites
# run_suite NAME TIMEOUT CMD...: streams the suite's lines (all but its own count line) and adds its counts.
run_suite() {
  local suite=$1 limit=$2; shift 2
  local out rc start line p f
  out=$(mktemp "${TMPDIR:-/tmp}/warren-it-$suite.XXXXXX")
  start=$(date +%s)
  echo "== $suite"
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$out" | grep -vE '^[0-9]+ passed, [0-9]+ failed$'
  rc=${PIPESTATUS[0]}
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
  rm -f "$out"
  if [ -z "$line" ]; then
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then note_fail "$suite: timed out after ${limit}s"
    else note_fail "$suite: did not finish (rc $rc)"; fi
    echo "== $suite: no count line, rc $rc, $(($(date +%s) - start)) s"
    return
  fi
  p=${line%% passed*}
  f=${line#*passed, }; f=${f%% failed*}
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then note_fail "$suite: exited with rc $rc although no check failed"; fi
  echo "== $suite: $p passed, $f failed (rc $rc, $(($(date +%s) - start)) s)"
}

if [ "$py_ok" = yes ]; then
  AMQP_URL="$url" run_suite pika 150 "$cache/venv/bin/python" "$here/pika_test.py"
else
  note_fail "pika: could not install ${py_reqs[*]}"
fi
if [ "$py_ok" = yes ]; then
  AMQP_URL="$url" run_suite aio-pika 60 "$cache/venv/bin/python" "$here/aio_pika_test.py"
else
  note_fail "aio-pika: could not install ${py_reqs[*]}"
fi
if [ "$js_ok" = yes ]; then
  AMQP_URL="$url" NODE_PATH="$cache/node_modules" run_suite amqplib 90 node "$here/amqplib_test.js"
else
  note_fail "amqplib: could not install $js_req"
fi
if [ "$py_ok" = yes ]; then
  PYTHON="$cache/venv/bin/python" run_suite celery 150 bash "$here/celery_app/run_celery.sh" "$url"
else
  note_fail "celery: could not install ${py_reqs[*]}"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
