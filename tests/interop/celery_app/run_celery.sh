#!/usr/bin/env bash
# Celery interop check: starts a worker of tasks.py against a RUNNING broker, runs client.py, stops the worker.
# Usage: run_celery.sh [AMQP_URL]   (default amqp://guest:guest@127.0.0.1:5672/%2f)
# Needs celery importable by $PYTHON (default python3); run.sh points it at its venv.
# Prints the client's 'PASS/FAIL name' lines and ends with 'N passed, M failed'; exits with the client's status.
set -u
here=$(cd "$(dirname "$0")" && pwd)
url=${1:-${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}}
py=${PYTHON:-python3}
client_timeout=${CELERY_CLIENT_TIMEOUT:-90}
export CELERY_BROKER_URL=$url
export PYTHONDONTWRITEBYTECODE=1                   # no __pycache__ in the repo
export CELERY_QUEUE="warren-it.celery.$$.$RANDOM"   # a queue of its own for every run
cd "$here" || exit 1
log=$(mktemp "${TMPDIR:-/tmp}/warren-it-celery-worker.XXXXXX")
out=$(mktemp "${TMPDIR:-/tmp}/warren-it-celery-client.XXXXXX")

"$py" -m celery -A tasks worker --pool=solo --loglevel=warning -n "warren-it-$$@%h" >"$log" 2>&1 &
worker=$!

stop_worker() {
  if [ -n "${worker:-}" ] && kill -0 "$worker" 2>/dev/null; then
    kill -TERM "$worker" 2>/dev/null          # warm shutdown
    for _ in $(seq 1 50); do kill -0 "$worker" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$worker" 2>/dev/null
    wait "$worker" 2>/dev/null
  fi
  worker=
}
cleanup() { stop_worker; rm -f "$log" "$out"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# client.py waits for the worker itself (its first check polls control.ping for up to 30 s)
timeout -k 5 "$client_timeout" "$py" client.py 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
if ! grep -qE '^[0-9]+ passed, [0-9]+ failed$' "$out"; then
  echo "FAIL celery.client: did not finish within ${client_timeout}s (rc=$rc)"
  p=$(grep -c '^PASS ' "$out"); f=$(grep -c '^FAIL ' "$out")
  echo "$p passed, $((f + 1)) failed"
  [ "$rc" -ne 0 ] || rc=1
fi
worker_alive=yes; kill -0 "$worker" 2>/dev/null || worker_alive=no
stop_worker
if [ "$rc" -ne 0 ] || [ "$worker_alive" = no ]; then
  echo "# celery worker log (alive at the end: $worker_alive), last 40 lines:"
  tail -n 40 "$log" | sed 's/^/#   /'
fi
# drop this run's task queue and exchange (the worker is gone); failure here is not a test failure
timeout 15 "$py" -c 'import os, tasks
with tasks.app.connection_for_write() as conn:
    conn.default_channel.queue_delete(os.environ["CELERY_QUEUE"])
    conn.default_channel.exchange_delete(os.environ["CELERY_QUEUE"])' >/dev/null 2>&1
exit "$rc"
