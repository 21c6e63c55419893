#!/usr/bin/env bash
# Install (if missing) and start, idempotently, the two real services KaPoW needs:
#   - Apache Kafka 4.x, single node in KRaft mode, from the official jars resolved by Maven from Maven Central;
#   - PostgreSQL from Debian's packages, as a cluster of our own under .services/ (not the system's).
# Both listen on 127.0.0.1 only. `services.sh stop` stops both; `services.sh status` tells what runs.
#
# With KAPOW_SERVICES_TLS=1 (off by default: TLS would change every `sslmode=prefer` connection), both also speak
# TLS with certificates made here with openssl (.services/tls/, `services.sh certs [DIR]` makes them alone):
#   - PostgreSQL: ssl = on, on the same port (plaintext with trust keeps working); the role kapow_cert may log in
#     over TLS only, with a client certificate (hostssl ... cert); connect as host=localhost, the name the server
#     certificate carries, with sslmode=verify-full and sslrootcert=.services/tls/ca.crt.
#   - Kafka: a SASL_SSL listener with SCRAM-SHA-512 on 127.0.0.1:KAPOW_KAFKA_SASL_PORT (9094), advertised as
#     localhost; the user kapow, its password in .services/tls/kafka-kapow.password, created with the broker's own
#     tools (`kafka-storage format --add-scram` for a new cluster, `kafka-configs` for an older one). The plaintext
#     listener on 127.0.0.1:9092 is unchanged.
# docs/SECURITY.md shows the matching KaPoW config.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${KAPOW_SERVICES_DIR:-$ROOT/.services}"
KAFKA_PORT="${KAPOW_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAPOW_KAFKA_CONTROLLER_PORT:-9093}"
PG_PORT="${KAPOW_PG_PORT:-5432}"
KAFKA_SASL_PORT="${KAPOW_KAFKA_SASL_PORT:-9094}"
TLS="${KAPOW_SERVICES_TLS:-0}"
KAFKA_DIR="$STATE/kafka"
PG_DIR="$STATE/postgres"
# As root, PostgreSQL runs as the postgres user, who must be able to reach its data directory. A checkout inside a
# private directory (`mktemp -d` makes mode 700) cannot host it, so the cluster then lives under /var/tmp, named
# after the state directory (the same name on every call, so stop and status find it).
choose_pg_dir() {
  if [ "$(id -u)" = 0 ] && id postgres >/dev/null 2>&1 && [ ! -f "$STATE/postgres/data/PG_VERSION" ] \
     && ! runuser -u postgres -- test -x "$(dirname "$STATE")" 2>/dev/null; then
    PG_DIR="/var/tmp/kapow-postgres-$(printf '%s' "$STATE" | sha1sum | cut -c1-12)"
  fi
}
choose_pg_dir
TLS_DIR="$STATE/tls"

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
  if [ "$(id -u)" != 0 ]; then "$@"
  elif [ "$PG_DIR" != "$STATE/postgres" ]; then (cd / && runuser -u postgres -- "$@")  # its paths are absolute
  else runuser -u postgres -- "$@"; fi
}

apt_install() {
  [ "$(id -u)" = 0 ] || die "need $* but not root; install it with: sudo apt-get install -y $*"
  say "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- certificates
make_certs() {  # make_certs DIR: a CA; a server certificate for the name localhost (PostgreSQL and Kafka); a client
                # certificate for the role kapow_cert; an unrelated CA (for tests that must be refused). Idempotent.
  local dir="$1"
  [ -f "$dir/.complete" ] && return 0
  command -v openssl >/dev/null || apt_install openssl
  mkdir -p "$dir"
  (
    cd "$dir"
    umask 077
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
    sign() {  # sign NAME SUBJECT EXTENSIONS: NAME.crt for NAME.key, signed by the CA
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
      printf '%b' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    }
    key ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=KaPoW development CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.crt
    key other-ca.key
    openssl req -x509 -new -key other-ca.key -sha256 -days 3650 -subj "/CN=Some other CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out other-ca.crt
    key server.key
    sign server "/CN=localhost" 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n'
    key client.key
    sign client "/CN=kapow_cert" 'extendedKeyUsage=clientAuth\n'
    cat server.key server.crt > server.pem  # Kafka's PEM key store: the key, then its certificate
    rm -f ./*.csr ./*.ext ./*.srl
    chmod 644 ca.crt other-ca.crt server.crt client.crt
  ) || die "openssl could not make the certificates in $dir"
  touch "$dir/.complete"
  say "certificates in $dir (CA ca.crt; server certificate for localhost; client certificate for kapow_cert)"
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
  choose_pg_dir  # the postgres user may only exist now
  [ "$PG_DIR" = "$STATE/postgres" ] || say "the postgres user cannot reach $STATE: the cluster lives in $PG_DIR"
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
  [ "$TLS" = 1 ] && postgres_tls "$bin"
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

postgres_tls() {  # ssl = on with the project's certificates: a reload, never a restart (ssl is a reload setting)
  local bin="$1" data="$PG_DIR/data" psql_ssl
  make_certs "$TLS_DIR"
  psql_ssl=("$bin/psql" -X -A -t -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
  if [ "$("${psql_ssl[@]}" -c "SHOW ssl")" != on ]; then
    install -m 600 "$TLS_DIR/server.key" "$data/server.key"
    install -m 644 "$TLS_DIR/server.crt" "$data/server.crt"
    install -m 644 "$TLS_DIR/ca.crt" "$data/ca.crt"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$data/server.key" "$data/server.crt" "$data/ca.crt"; fi
    grep -q '^hostssl all kapow_cert' "$data/pg_hba.conf" || {
      # certificate authentication for kapow_cert, over TLS only; every other line (trust) stays as it was
      printf '%s\n' "hostssl all kapow_cert 127.0.0.1/32 cert" "hostssl all kapow_cert ::1/128 cert" \
        "host all kapow_cert all reject" | cat - "$data/pg_hba.conf" > "$data/pg_hba.conf.new"
      mv "$data/pg_hba.conf.new" "$data/pg_hba.conf"
      if [ "$(id -u)" = 0 ]; then chown postgres: "$data/pg_hba.conf"; fi
    }
    "${psql_ssl[@]}" -c "ALTER SYSTEM SET ssl = on" -c "ALTER SYSTEM SET ssl_cert_file = 'server.crt'" \
      -c "ALTER SYSTEM SET ssl_key_file = 'server.key'" -c "ALTER SYSTEM SET ssl_ca_file = 'ca.crt'" >/dev/null \
      || die "cannot turn ssl on"
    as_postgres "$bin/pg_ctl" -D "$data" reload >/dev/null || die "PostgreSQL reload failed"
    local i
    for ((i = 0; i < 50; i++)); do [ "$("${psql_ssl[@]}" -c "SHOW ssl")" = on ] && break; sleep 0.2; done
    [ "$("${psql_ssl[@]}" -c "SHOW ssl")" = on ] || { tail -n 20 "$PG_DIR/postgres.log" >&2; die "ssl did not turn on"; }
  fi
  "${psql_ssl[@]}" -c "DO \$\$BEGIN CREATE ROLE kapow_cert LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END\$\$" \
    >/dev/null || die "cannot create the role kapow_cert"
  say "PostgreSQL TLS on 127.0.0.1:$PG_PORT (server certificate for localhost; CA $TLS_DIR/ca.crt)"
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
    if [ "$TLS" = 1 ] && ! port_open "$KAFKA_SASL_PORT"; then
      say "it has no SASL_SSL listener: a listener needs a restart (services.sh stop, then start with KAPOW_SERVICES_TLS=1)"
    fi
    return 0
  fi
  port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; set KAPOW_KAFKA_PORT or stop it"
  port_open "$KAFKA_CONTROLLER_PORT" &&
    die "port $KAFKA_CONTROLLER_PORT (Kafka's KRaft controller) is taken by another process; set KAPOW_KAFKA_CONTROLLER_PORT or stop it"
  if [ "$TLS" = 1 ] && port_open "$KAFKA_SASL_PORT"; then
    die "port $KAFKA_SASL_PORT is taken by another process; set KAPOW_KAFKA_SASL_PORT or stop it"
  fi
  sed -e "s:@DATA@:$KAFKA_DIR/data:" -e "s:@PORT@:$KAFKA_PORT:g" -e "s:@CONTROLLER_PORT@:$KAFKA_CONTROLLER_PORT:g" \
    "$ROOT/services/kafka/server.properties.in" > "$KAFKA_DIR/server.properties"
  local cp="$KAFKA_DIR/libs/*" scram=()
  if [ "$TLS" = 1 ]; then
    kafka_sasl_properties >> "$KAFKA_DIR/server.properties"
    scram=(--add-scram "SCRAM-SHA-512=[name=kapow,password=$(cat "$TLS_DIR/kafka-kapow.password")]")
  fi
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    say "formatting KRaft storage in $KAFKA_DIR/data"
    local cluster_id
    cluster_id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    java -cp "$cp" -Dlog4j2.configurationFile="$ROOT/services/kafka/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR" \
      kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" "${scram[@]}" >/dev/null \
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
  if [ "$TLS" = 1 ]; then
    # a cluster formatted before TLS was asked for has no SCRAM user yet: add it with the broker's own tool
    java -cp "$cp" -Dlog4j2.configurationFile="$ROOT/services/kafka/log4j2.properties" -Dkafka.logs.dir="$KAFKA_DIR" \
      kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter --entity-type users \
      --entity-name kapow --add-config "SCRAM-SHA-512=[password=$(cat "$TLS_DIR/kafka-kapow.password")]" >/dev/null \
      || die "kafka-configs could not create the SCRAM user kapow"
    wait_port "$KAFKA_SASL_PORT" "Kafka SASL_SSL" 30 "$KAFKA_DIR/server.log"
    say "Kafka SASL_SSL (SCRAM-SHA-512, user kapow) on 127.0.0.1:$KAFKA_SASL_PORT, advertised as localhost"
  fi
}

kafka_sasl_properties() {  # the lines that add a SASL_SSL listener (later lines win in a properties file)
  make_certs "$TLS_DIR" >&2
  [ -f "$TLS_DIR/kafka-kapow.password" ] || (umask 077; openssl rand -hex 16 > "$TLS_DIR/kafka-kapow.password")
  cat <<PROPS
# KAPOW_SERVICES_TLS=1: a SASL_SSL listener with SCRAM-SHA-512 beside the plaintext one
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://localhost:$KAFKA_SASL_PORT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS_DIR/server.pem
listener.name.sasl_ssl.ssl.truststore.type=PEM
listener.name.sasl_ssl.ssl.truststore.location=$TLS_DIR/ca.crt
PROPS
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
  certs) make_certs "${2:-$TLS_DIR}" ;;
  sasl-properties) kafka_sasl_properties ;;  # what KAPOW_SERVICES_TLS=1 adds to server.properties (tests use it)
  stop) stop_kafka; stop_postgres ;;
  status)
    if kafka_pid >/dev/null; then say "Kafka running (pid $(kafka_pid)) on 127.0.0.1:$KAFKA_PORT"; else say "Kafka stopped"; fi
    if port_open "$PG_PORT"; then say "PostgreSQL answering on 127.0.0.1:$PG_PORT"; else say "PostgreSQL stopped"; fi ;;
  *) die "usage: services.sh [start|stop|status|certs [DIR]|sasl-properties]" ;;
esac
