#!/usr/bin/env bash
# Issue 14's comparison: a 3-node Warren cluster (release build, quorum queues on its own Raft
# groups) against a 3-node RabbitMQ 3.10 cluster (benches/rabbitmq-cluster.sh, Debian's package),
# both on this machine, quorum queues, persistent 1 KiB messages with publisher confirms, driven
# by examples/quorum_bench.rs. Rounds interleave the two brokers; one JSON line per run on stdout
# (and in $OUT). Not part of CI.
#
# Usage: benches/quorum-side-by-side.sh   (env: ROUNDS=3 DUR=20 CONFIGS="A C" OUT=file)
#   A: 1 queue, 1 publisher (window 100), 1 consumer on another node
#   B: 4 queues on 3 leaders, 4 publishers (window 100 each), 4 consumers
#   C: 1 queue, 1 publisher with window 1 (latency at low load)
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-20}
CONFIGS=${CONFIGS:-A C}
OUT=${OUT:-/tmp/quorum-side-by-side.jsonl}
dir=${WARREN_DIR:-/tmp/warren-qbench}
bench=$here/target/release/examples/quorum_bench
warren=$here/target/release/warren
[ -x "$bench" ] && [ -x "$warren" ] || (cd "$here" && cargo build --release --bin warren --example quorum_bench) || exit 1

declare -A CFG=([A]="--queues 1 --window 100" [B]="--queues 4 --window 100" [C]="--queues 1 --window 1")

start_warren() {
  rm -rf "$dir"; mkdir -p "$dir"
  head -c 32 /dev/urandom | base64 > "$dir/secret"; chmod 600 "$dir/secret"
  for i in 1 2 3; do
    "$warren" --node-name "warren@q$i" --data-dir "$dir/n$i" \
      --amqp-listen "127.0.0.1:$((5880 + i))" --http-listen "127.0.0.1:$((15880 + i))" --prometheus-listen '' \
      --cluster-listen "127.0.0.1:$((25880 + i))" \
      --cluster-seeds 127.0.0.1:25881,127.0.0.1:25882,127.0.0.1:25883 \
      --cluster-secret-file "$dir/secret" > "$dir/n$i.log" 2>&1 &
    echo $! > "$dir/n$i.pid"
  done
  for _ in $(seq 1 100); do
    n=$(curl -s -u guest:guest http://127.0.0.1:15881/api/nodes | grep -o '"running":true' | wc -l)
    [ "$n" = 3 ] && return 0
    sleep 0.2
  done
  echo "the Warren cluster did not form" >&2; return 1
}
stop_warren() { for i in 1 2 3; do kill "$(cat "$dir/n$i.pid")" 2>/dev/null; done; wait 2>/dev/null; }

start_warren || exit 1
"$here/benches/rabbitmq-cluster.sh" start >/dev/null || exit 1
w_urls=amqp://guest:guest@127.0.0.1:5881/%2f,amqp://guest:guest@127.0.0.1:5882/%2f,amqp://guest:guest@127.0.0.1:5883/%2f
r_urls=amqp://guest:guest@127.0.0.1:5791/%2f,amqp://guest:guest@127.0.0.1:5792/%2f,amqp://guest:guest@127.0.0.1:5793/%2f
w_pids=$(cat "$dir"/n1.pid "$dir"/n2.pid "$dir"/n3.pid | paste -sd,)
r_pids=$("$here/benches/rabbitmq-cluster.sh" pids | awk '{print $2}' | paste -sd,)
for r in $(seq 1 "$ROUNDS"); do
  for c in $CONFIGS; do
    for b in warren rabbitmq; do
      if [ $b = warren ]; then urls=$w_urls pids=$w_pids; else urls=$r_urls pids=$r_pids; fi
      load=$(cut -d' ' -f1 /proc/loadavg)
      line=$("$bench" --urls "$urls" --size 1024 --duration "$DUR" --warmup 3 --broker-pids "$pids" ${CFG[$c]} 2>/dev/null)
      echo "{\"broker\":\"$b\",\"config\":\"$c\",\"round\":$r,\"load1\":$load,\"result\":${line:-null}}" | tee -a "$OUT"
    done
  done
done
stop_warren
"$here/benches/rabbitmq-cluster.sh" stop >/dev/null
