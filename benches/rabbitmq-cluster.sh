#!/usr/bin/env bash
# A local N-node RabbitMQ cluster from Debian's rabbitmq-server package (apt-get install -y
# rabbitmq-server), the reference side of the cluster comparison (issue 14): nodes
# rabbit-wc1..N@localhost, AMQP on 127.0.0.1:5791.. (BASE_PORT), management on 15791..
# (+10000), Erlang distribution on 25791.. (+20000), one shared Erlang cookie, node 2..N joined to
# node 1 with join_cluster, the management plugin enabled, guest/guest usable from loopback.
# State lives in $DIR (default /tmp/warren-rabbit-cluster), one folder per node.
#
# Usage: benches/rabbitmq-cluster.sh start|stop|clean|status|pids|ctl [N=3]
#   start   starts the nodes not running yet and joins them (idempotent); prints the AMQP URLs
#   stop    stops every node this script started (rabbitmqctl stop, then kill -9 of leftovers)
#   clean   stop, then delete $DIR (queues, messages, the cookie): the next start is a new cluster
#   status  rabbitmqctl cluster_status from node 1, and which ports answer
#   pids    one line per node: name pid
#   ctl I CMD...   runs CMD (rabbitmqctl, rabbitmq-queues, rabbitmq-diagnostics, rabbitmq-plugins)
#                  against node I with this cluster's environment, e.g. `ctl 2 rabbitmq-queues quorum_status q`
# Env: DIR, BASE_PORT (5791), PARTITION_HANDLING (RabbitMQ's default: ignore; or pause_minority);
# N can also be given as the second argument.
set -u
cmd=${1:-start}
dir=${DIR:-/tmp/warren-rabbit-cluster}
base_port=${BASE_PORT:-5791}
sbin=/usr/lib/rabbitmq/bin

n=3
if [ "$cmd" != ctl ] && [ $# -ge 2 ]; then n=$2; fi
# Nodes started earlier with a larger N: stop/status/pids cover them too.
if [ -f "$dir/nodes" ] && [ "$(cat "$dir/nodes")" -gt "$n" ] && [ "$cmd" != start ]; then
  n=$(cat "$dir/nodes")
fi

# The same HOME for every node and every CLI call: one .erlang.cookie for all of them.
export HOME=$dir/home

node_env() { # node_env I: exports the environment of node I
  local i=$1 nd=$dir/rabbit-wc$1
  export RABBITMQ_NODENAME=rabbit-wc$i@localhost
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$((base_port + i - 1))
  export RABBITMQ_DIST_PORT=$((base_port + i - 1 + 20000))
  export RABBITMQ_MNESIA_BASE=$nd/mnesia
  export RABBITMQ_LOG_BASE=$nd/log
  export RABBITMQ_CONFIG_FILE=$nd/rabbitmq
  export RABBITMQ_ENABLED_PLUGINS_FILE=$nd/enabled_plugins
  export RABBITMQ_PID_FILE=$nd/rabbit.pid
  export ERL_CRASH_DUMP=$nd/erl_crash.dump
}

port_open() { (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node_pid() { # the beam's pid if it runs, else nothing
  local f=$dir/rabbit-wc$1/rabbit.pid
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

ctl() { # ctl I rabbitmqctl ARGS...
  local i=$1 tool=$2
  shift 2
  node_env "$i"
  "$sbin/$tool" -n "$RABBITMQ_NODENAME" "$@"
}

start_node() {
  local i=$1 nd=$dir/rabbit-wc$1
  node_env "$i"
  if port_open "$RABBITMQ_NODE_PORT"; then
    if [ -z "$(node_pid "$i")" ]; then
      echo "port $RABBITMQ_NODE_PORT is taken by something else" >&2
      return 1
    fi
    echo "$RABBITMQ_NODENAME already running (pid $(node_pid "$i"))"
    return 0
  fi
  mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
  echo '[rabbitmq_management].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  cat >"$nd/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$RABBITMQ_NODE_PORT
management.tcp.port = $((RABBITMQ_NODE_PORT + 10000))
management.tcp.ip = 127.0.0.1
loopback_users.guest = true
cluster_partition_handling = ${PARTITION_HANDLING:-ignore}
CONF
  ulimit -n 20000
  nohup "$sbin/rabbitmq-server" >"$nd/server.out" 2>&1 &
  echo "starting $RABBITMQ_NODENAME (wrapper pid $!) on $RABBITMQ_NODE_PORT"
}

wait_node() { # waits until node I's AMQP port answers and its app runs
  local i=$1
  node_env "$i"
  for _ in $(seq 1 240); do
    if port_open "$RABBITMQ_NODE_PORT"; then
      ctl "$i" rabbitmqctl await_startup >/dev/null 2>&1 && return 0
    fi
    sleep 0.5
  done
  echo "rabbit-wc$i did not start; see $dir/rabbit-wc$i/log and server.out" >&2
  return 1
}

in_cluster() { # is node I (I>1) a member of node 1's cluster?
  ctl 1 rabbitmqctl cluster_status --formatter json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if sys.argv[1] in d["disk_nodes"] else 1)' "rabbit-wc$1@localhost"
}

case $cmd in
start)
  for p in $(seq "$base_port" $((base_port + n - 1))); do
    for q in $p $((p + 10000)) $((p + 20000)); do
      if port_open "$q" && ! [ -f "$dir/rabbit-wc$((p - base_port + 1))/rabbit.pid" ]; then
        echo "port $q is in use; pick another BASE_PORT" >&2
        exit 1
      fi
    done
  done
  mkdir -p "$HOME"
  if ! [ -f "$HOME/.erlang.cookie" ]; then
    head -c 30 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$HOME/.erlang.cookie"
    chmod 400 "$HOME/.erlang.cookie"
  fi
  old=$(cat "$dir/nodes" 2>/dev/null || echo 0)
  [ "$n" -gt "$old" ] && echo "$n" >"$dir/nodes"
  # All at once (a restarted cluster's nodes wait for each other's tables), then node 2..N join
  # node 1 unless they already belong to it.
  for i in $(seq 1 "$n"); do start_node "$i" || exit 1; done
  wait_node 1 || exit 1
  for i in $(seq 2 "$n"); do
    wait_node "$i" || exit 1
    if ! in_cluster "$i"; then
      echo "rabbit-wc$i joins rabbit-wc1"
      ctl "$i" rabbitmqctl stop_app >/dev/null &&
        ctl "$i" rabbitmqctl reset >/dev/null &&
        ctl "$i" rabbitmqctl join_cluster rabbit-wc1@localhost 2>>"$dir/rabbit-wc$i/join.log" &&
        ctl "$i" rabbitmqctl start_app >/dev/null || exit 1
    fi
  done
  for i in $(seq 1 "$n"); do
    echo "rabbit-wc$i@localhost pid $(node_pid "$i") amqp://guest:guest@127.0.0.1:$((base_port + i - 1))/%2f http://127.0.0.1:$((base_port + i - 1 + 10000))/"
  done
  ;;
stop)
  for i in $(seq "$n" -1 1); do
    pid=$(node_pid "$i")
    [ -z "$pid" ] && continue
    echo "stopping rabbit-wc$i@localhost (pid $pid)"
    ctl "$i" rabbitmqctl stop "$dir/rabbit-wc$i/rabbit.pid" >/dev/null 2>&1 || true
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null; fi
  done
  # Each node's wrapper and its epmd-independent helpers (erl_child_setup, inet_gethost) die with
  # the beam; epmd is shared with every other Erlang node on the machine and is left running.
  ;;
clean)
  "$0" stop "$n"
  case $dir in /tmp/*) rm -rf "$dir" ;; *) echo "not deleting $dir (outside /tmp)" >&2 ;; esac
  ;;
status)
  for i in $(seq 1 "$n"); do
    p=$((base_port + i - 1))
    printf 'rabbit-wc%s@localhost pid %s amqp %s %s mgmt %s %s\n' "$i" "$(node_pid "$i" || echo -)" \
      "$p" "$(port_open "$p" && echo up || echo down)" $((p + 10000)) "$(port_open $((p + 10000)) && echo up || echo down)"
  done
  for i in $(seq 1 "$n"); do
    if [ -n "$(node_pid "$i")" ]; then ctl "$i" rabbitmqctl cluster_status; break; fi
  done
  ;;
pids)
  for i in $(seq 1 "$n"); do echo "rabbit-wc$i@localhost $(node_pid "$i")"; done
  ;;
ctl)
  shift
  i=$1
  shift
  ctl "$i" "$@"
  ;;
*)
  echo "usage: $0 start|stop|clean|status|pids [N] | ctl I TOOL ARGS..." >&2
  exit 2
  ;;
esac
