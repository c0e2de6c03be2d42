#!/usr/bin/env bash
# Builds the Dockerfile and checks the image as a user would run it. Not part of .ci/run (it needs a
# container engine and a full release build inside the image); run it after changing the
# Dockerfile:   tests/docker/check.sh
#
# Uses docker when its engine answers, else podman (Debian: apt-get install podman runc buildah).
# LOCAL_BASES=1 first builds stand-ins for the two base images (rust:1-bookworm, debian:bookworm-slim)
# with debootstrap and this machine's Rust toolchain, for machines that cannot pull from Docker Hub.
# Checks: the image starts; a client outside the container logs in as guest (as with RabbitMQ's
# image); ../shared/interop/run.sh passes if present; persistent messages survive a stop (SIGTERM,
# exit status 0) and a kill -9; RABBITMQ_DEFAULT_USER/PASS create that user instead of guest;
# warrenctl works inside; it runs as the unprivileged user 'warren'.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMG=${IMG:-warren:check}
PORT=${PORT:-5695}
if docker info >/dev/null 2>&1; then
  E=(docker); RUN=(docker run)
else
  command -v podman >/dev/null || { echo "no docker engine and no podman" >&2; exit 1; }
  E=(podman)
  # Plain sandboxes: crun may refuse a hybrid cgroup layout and raising rlimits.
  RUN=(podman run --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
  command -v runc >/dev/null && RUN+=(--runtime "$(command -v runc)")
fi

if [ "${LOCAL_BASES:-0}" = 1 ]; then
  t=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$t/slim" http://deb.debian.org/debian >"$t/log" 2>&1
  tar -C "$t/slim" -c . | "${E[0]}" import - docker.io/library/debian:bookworm-slim
  cp -a "$t/slim" "$t/rust"
  cp /etc/resolv.conf "$t/rust/etc/"
  # Local CAs too (a build machine behind a TLS-inspecting proxy needs them to reach crates.io).
  mkdir -p "$t/rust/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$t/rust/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$t/rust" sh -c 'apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
    >/dev/null && update-ca-certificates >/dev/null'
  tc=$(rustc --print sysroot)
  mkdir -p "$t/rust/usr/local/rustup/toolchains" "$t/rust/usr/local/cargo/bin"
  cp -a "$tc" "$t/rust/usr/local/rustup/toolchains/"
  printf 'version = "12"\ndefault_toolchain = "%s"\n' "$(basename "$tc")" >"$t/rust/usr/local/rustup/settings.toml"
  cp -a "$(dirname "$(command -v cargo)")"/. "$t/rust/usr/local/cargo/bin/"
  tar -C "$t/rust" -c . | "${E[0]}" import \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - docker.io/library/rust:1-bookworm
  rm -rf "$t"
fi

build=("${E[0]}" build -t "$IMG" .)
[ "${E[0]}" = podman ] && build=(podman build --pull=never --network host --isolation chroot -t "$IMG" .)
"${build[@]}"

PY=${PYTHON:-python3}
"$PY" -c 'import pika' 2>/dev/null || { echo "needs python3 with pika (pip install pika)" >&2; exit 1; }
names=()
cleanup() { for n in "${names[@]}"; do "${E[0]}" rm -f "$n" >/dev/null 2>&1 || true; done; }
trap cleanup EXIT
start() { # start NAME PORT [ENV...]
  local n=$1 p=$2; shift 2
  names+=("$n")
  "${RUN[@]}" -d --name "$n" "$@" -p "$p:5672" "$IMG" >/dev/null
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && return 0
    sleep 0.2
  done
  "${E[0]}" logs "$n"; echo "FAIL: $n did not listen" >&2; exit 1
}
amqp() { # amqp URL put|count|login
  "$PY" - "$@" <<'PYEOF'
import pika, sys
url, mode = sys.argv[1], sys.argv[2]
c = pika.BlockingConnection(pika.URLParameters(url)); ch = c.channel()
if mode == "put":
    ch.queue_declare("docker-check", durable=True); ch.confirm_delivery()
    for i in range(500):
        ch.basic_publish("", "docker-check", b"m%d" % i, pika.BasicProperties(delivery_mode=2))
elif mode == "count":
    print(ch.queue_declare("docker-check", durable=True, passive=True).method.message_count)
c.close()
PYEOF
}
ok() { echo "ok: $*"; }

start wcheck1 "$PORT"
url="amqp://guest:guest@127.0.0.1:$PORT/%2f"
amqp "$url" login && ok "guest logs in from outside the container"
if [ -x ../shared/interop/run.sh ] || [ -f ../shared/interop/run.sh ]; then
  bash ../shared/interop/run.sh "$url" | tail -1
fi
amqp "$url" put
"${E[0]}" stop -t 20 wcheck1 >/dev/null
code=$("${E[0]}" inspect wcheck1 --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || { echo "FAIL: exit status $code after stop" >&2; exit 1; }
ok "stop (SIGTERM) exits 0"
"${E[0]}" start wcheck1 >/dev/null; sleep 2
[ "$(amqp "$url" count)" = 500 ] || { echo "FAIL: messages lost over a restart" >&2; exit 1; }
ok "500 persistent messages survive a restart"
amqp "$url" put
"${E[0]}" kill -s KILL wcheck1 >/dev/null; "${E[0]}" start wcheck1 >/dev/null; sleep 2
[ "$(amqp "$url" count)" = 1000 ] || { echo "FAIL: messages lost over kill -9" >&2; exit 1; }
ok "confirmed messages survive kill -9"
"${E[0]}" exec wcheck1 warrenctl list_queues | grep -q docker-check && ok "warrenctl inside the container"
[ "$("${E[0]}" exec wcheck1 id -un)" = warren ] && ok "runs as user warren"

start wcheck2 $((PORT + 1)) -e RABBITMQ_DEFAULT_USER=app -e RABBITMQ_DEFAULT_PASS=pw
amqp "amqp://app:pw@127.0.0.1:$((PORT + 1))/%2f" login && ok "RABBITMQ_DEFAULT_USER/PASS"
if amqp "amqp://guest:guest@127.0.0.1:$((PORT + 1))/%2f" login 2>/dev/null; then
  echo "FAIL: guest exists beside RABBITMQ_DEFAULT_USER" >&2; exit 1
fi
ok "no guest user then"
echo "docker check passed"
