#!/usr/bin/env bash
# Installs and starts what the test suite needs on a Debian machine, idempotently and fast when
# everything is already there:
#   PostgreSQL on 127.0.0.1:5432 (trust auth for loopback, role `root`, database `test`)
#   Redis on 127.0.0.1:6379 (no persistence)
#   podman serving the Docker API on unix:///run/podman/podman.sock (for testcontainers), with runc
#   Debian's chromium and its driver (the browser end-to-end tests; never a browser download)
#   Java 17 and Maven, the Apache Kafka jars (Maven Central) and the local container image built from them
#   (python -m infra._kafka_image, with the project's virtualenv: .venv, or $EVENTBUS_PYTHON)
#
# Usage: infra/dev/services.sh [--no-kafka]     (run as root; CI and the README's test command call it)
set -euo pipefail
cd "$(dirname "$0")/../.."

want_kafka=1
[ "${1:-}" = "--no-kafka" ] && want_kafka=0

log() { echo "services: $*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -q >/dev/null
    apt_updated=1
  fi
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# -- PostgreSQL -------------------------------------------------------------------------------------
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
apt_install postgresql
version=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1 || true)
if [ -z "$version" ]; then
  version=$(ls /usr/lib/postgresql | sort -n | tail -1)
  log "creating PostgreSQL cluster $version/main"
  as_root pg_createcluster "$version" main >/dev/null
fi
hba="/etc/postgresql/$version/main/pg_hba.conf"
if ! grep -q "eventbus-tests" "$hba"; then
  log "trust auth for loopback in $hba"
  as_root sed -i '1i host all all 127.0.0.1/32 trust  # eventbus-tests\nhost all all ::1/128 trust  # eventbus-tests' "$hba"
  pg_up && as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
fi
if ! pg_up; then
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 60); do pg_up && break; sleep 0.5; done
fi
pg_up || { echo "services: PostgreSQL does not answer on 127.0.0.1:5432" >&2; exit 1; }
psql_pg() { psql -h 127.0.0.1 -U postgres -d postgres -tAq -v ON_ERROR_STOP=1 -c "$1"; }
[ "$(psql_pg "SELECT 1 FROM pg_roles WHERE rolname = 'root'")" = "1" ] || psql_pg "CREATE ROLE root SUPERUSER LOGIN"
[ "$(psql_pg "SELECT 1 FROM pg_database WHERE datname = 'test'")" = "1" ] || psql_pg "CREATE DATABASE test OWNER root"

# -- Redis ------------------------------------------------------------------------------------------
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
apt_install redis-server
if ! redis_up; then
  log "starting Redis"
  as_root mkdir -p /var/lib/redis /var/log/redis
  as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 60); do redis_up && break; sleep 0.5; done
fi
redis_up || { echo "services: Redis does not answer on 127.0.0.1:6379" >&2; exit 1; }

# -- chromium (headless, for the screens' end-to-end tests) -------------------------------------------
apt_install chromium chromium-driver

[ "$want_kafka" -eq 1 ] || { log "ready (PostgreSQL, Redis)"; exit 0; }

# -- podman (the Docker API for testcontainers) -------------------------------------------------------
# dnsname: container names resolve inside a compose network (the CNI backend of Debian bookworm's podman)
apt_install podman runc debootstrap podman-compose golang-github-containernetworking-plugin-dnsname
conf=/etc/containers/containers.conf
if ! grep -q "eventbus" "$conf" 2>/dev/null; then
  log "configuring podman ($conf): runc, cgroupfs, no default ulimits"
  as_root mkdir -p /etc/containers
  as_root tee "$conf" >/dev/null <<'EOF'
# eventbus: podman as root with runc on these machines (crun fails on setrlimit and the hybrid cgroup layout)
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
fi
sock=/run/podman/podman.sock
podman_up() { curl -sf --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; }
if ! podman_up; then
  log "starting the podman API service on $sock"
  as_root mkdir -p /run/podman /var/log/eventbus
  as_root setsid nohup podman system service --time=0 "unix://$sock" >/var/log/eventbus/podman.log 2>&1 < /dev/null &
  for _ in $(seq 60); do podman_up && break; sleep 0.5; done
fi
podman_up || { echo "services: the podman API does not answer on $sock (see /var/log/eventbus/podman.log)" >&2; exit 1; }

# -- Apache Kafka: Java, Maven, the jars and the image ------------------------------------------------------
command -v java >/dev/null || apt_install openjdk-17-jre-headless
command -v mvn >/dev/null || apt_install maven
python=${EVENTBUS_PYTHON:-.venv/bin/python}
if [ ! -x "$python" ]; then
  log "the Apache Kafka image is built with the project installed: python3 -m venv .venv && .venv/bin/pip install -e '.[dev]', then run this again"
  exit 0
fi
image=$("$python" -m infra._kafka_image)
log "ready (PostgreSQL, Redis, podman, Apache Kafka image $image)"
