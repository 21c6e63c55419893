#!/usr/bin/env bash
# Install (if missing) and start, idempotently, the two real services KaPoW needs:
#   - Apache Kafka 4.x, single node in KRaft mode, from the official jars resolved by Maven from Maven Central;
#   - PostgreSQL from Debian's packages, as a cluster of our own under .services/ (not the system's).
# Both listen on 127.0.0.1 only. `services.sh stop` stops both; `services.sh status` tells what runs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${KAPOW_SERVICES_DIR:-$ROOT/.services}"
KAFKA_PORT="${KAPOW_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAPOW_KAFKA_CONTROLLER_PORT:-9093}"
PG_PORT="${KAPOW_PG_PORT:-5432}"
KAFKA_DIR="$STATE/kafka"
PG_DIR="$STATE/postgres"

say() { printf '[services] %s\n' "$*"; }
die() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # wait_port PORT NAME SECONDS LOGFILE
  local i
  for ((i = 0; i < $3 * 5; i++)); do
    if port_open "$1"; then return 0; fi
    sleep 0.2
  done
  [ -f "$4" ] && tail -n 30 "$4" >&2
  die "$2 did not answer on 127.0.0.1:$1 within $3 s (log: $4)"
}

as_postgres() {  # PostgreSQL refuses to run as root: drop to the postgres user when we are root.
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

apt_install() {
  [ "$(id -u)" = 0 ] || die "need $* but not root; install it with: sudo apt-get install -y $*"
  say "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- PostgreSQL
pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$d" ] && [ -x "$d/postgres" ] && echo "$d"
}

start_postgres() {
  local bin
  bin=$(pg_bin) || true
  if [ -z "$bin" ]; then apt_install postgresql; bin=$(pg_bin) || die "postgresql installed but no server binary found"; fi
  mkdir -p "$PG_DIR"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$PG_DIR"; chmod 700 "$PG_DIR"; fi
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    say "initialising PostgreSQL cluster in $PG_DIR/data"
    as_postgres "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$PG_DIR/data/postgresql.conf" <<CONF
# KaPoW development cluster: loopback only, sized for a 2-core / 24 GiB machine.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
max_connections = 200
shared_buffers = 1GB
max_wal_size = 4GB
checkpoint_timeout = 15min
wal_buffers = 16MB
logging_collector = off
# Logical decoding, for Debezium's PostgreSQL source (scripts/connect.sh, make cdc-demo): one slot and one
# WAL sender per running connector.
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
CONF
  fi
  if as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    say "PostgreSQL already running on 127.0.0.1:$PG_PORT"
  else
    port_open "$PG_PORT" && die "port $PG_PORT is taken by another process; set KAPOW_PG_PORT or stop it"
    as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start >/dev/null \
      || { tail -n 30 "$PG_DIR/postgres.log" >&2; die "PostgreSQL failed to start"; }
  fi
  local i
  for ((i = 0; i < 150; i++)); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.2
  done
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL is not ready on 127.0.0.1:$PG_PORT"
  ensure_logical_decoding "$bin"
  say "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') ready on 127.0.0.1:$PG_PORT (user postgres, no password)"
}

ensure_logical_decoding() {  # a cluster made before wal_level=logical was part of the template: set it once
  local bin="$1" wal
  wal=$("$bin/psql" -X -A -t -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "SHOW wal_level") \
    || die "cannot ask PostgreSQL its wal_level"
  [ "$wal" = logical ] && return 0
  say "wal_level is $wal; setting wal_level = logical (for change data capture) and restarting PostgreSQL once"
  "$bin/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "ALTER SYSTEM SET wal_level = logical" \
    -c "ALTER SYSTEM SET max_replication_slots = 20" \
    -c "ALTER SYSTEM SET max_wal_senders = 20" >/dev/null || die "ALTER SYSTEM SET wal_level failed"
  as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -m fast -w -t 60 restart >/dev/null \
    || { tail -n 30 "$PG_DIR/postgres.log" >&2; die "PostgreSQL failed to restart with wal_level = logical"; }
  local i
  for ((i = 0; i < 150; i++)); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.2
  done
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || die "PostgreSQL is not ready on 127.0.0.1:$PG_PORT after the restart"
}

stop_postgres() {
  local bin
  bin=$(pg_bin) || return 0
  if [ -f "$PG_DIR/data/PG_VERSION" ] && as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1; then
    as_postgres "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null && say "PostgreSQL stopped"
  fi
}

# ---------------------------------------------------------------- Kafka
kafka_pid() { [ -f "$KAFKA_DIR/kafka.pid" ] && kill -0 "$(cat "$KAFKA_DIR/kafka.pid")" 2>/dev/null && cat "$KAFKA_DIR/kafka.pid"; }

start_kafka() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  mkdir -p "$KAFKA_DIR"
  local version
  version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/services/kafka/pom.xml")
  if [ ! -f "$KAFKA_DIR/libs/.complete-$version" ]; then
    command -v mvn >/dev/null || apt_install maven
    say "resolving Apache Kafka $version jars from Maven Central"
    rm -rf "$KAFKA_DIR/libs"
    mvn -B -q -Dstyle.color=never -f "$ROOT/services/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$KAFKA_DIR/libs" -DincludeScope=runtime || die "Maven could not resolve the Kafka jars"
    touch "$KAFKA_DIR/libs/.complete-$version"
  fi
  if kafka_pid >/dev/null; then
    say "Kafka already running on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; set KAPOW_KAFKA_PORT or stop it"
  sed -e "s:@DATA@:$KAFKA_DIR/data:" -e "s:@PORT@:$KAFKA_PORT:g" -e "s:@CONTROLLER_PORT@:$KAFKA_CONTROLLER_PORT:g" \
    "$ROOT/services/kafka/server.properties.in" > "$KAFKA_DIR/server.properties"
  local cp="$KAFKA_DIR/libs/*"
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    say "formatting KRaft storage in $KAFKA_DIR/data"
    local cluster_id
    cluster_id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    java -cp "$cp" -Dlog4j2.configurationFile="$ROOT/services/kafka/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR" \
      kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" >/dev/null \
      || die "kafka storage format failed"
  fi
  say "starting Kafka $version (KRaft) on 127.0.0.1:$KAFKA_PORT"
  nohup java -Xms512m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$ROOT/services/kafka/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR" \
    -cp "$cp" kafka.Kafka "$KAFKA_DIR/server.properties" > "$KAFKA_DIR/stdout.log" 2>&1 &
  echo $! > "$KAFKA_DIR/kafka.pid"
  wait_port "$KAFKA_PORT" Kafka 90 "$KAFKA_DIR/server.log"
  local i
  for ((i = 0; i < 300; i++)); do
    grep -q 'Kafka Server started' "$KAFKA_DIR/server.log" 2>/dev/null && break
    kafka_pid >/dev/null || { tail -n 30 "$KAFKA_DIR/stdout.log" >&2; die "Kafka exited during start"; }
    sleep 0.2
  done
  say "Kafka $version ready on 127.0.0.1:$KAFKA_PORT"
}

stop_kafka() {
  local pid
  if pid=$(kafka_pid); then
    kill "$pid"
    local i
    for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$KAFKA_DIR/kafka.pid"
    say "Kafka stopped"
  fi
}

case "${1:-start}" in
  start) start_postgres; start_kafka ;;
  stop) stop_kafka; stop_postgres ;;
  status)
    if kafka_pid >/dev/null; then say "Kafka running (pid $(kafka_pid)) on 127.0.0.1:$KAFKA_PORT"; else say "Kafka stopped"; fi
    if port_open "$PG_PORT"; then say "PostgreSQL answering on 127.0.0.1:$PG_PORT"; else say "PostgreSQL stopped"; fi ;;
  *) die "usage: services.sh [start|stop|status]" ;;
esac
