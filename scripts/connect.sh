#!/usr/bin/env bash
# Run Debezium's PostgreSQL source connector in a Kafka Connect standalone worker, idempotently, loopback only.
#
#   connect.sh start  --database DB [options]   start a worker capturing DB (no-op if it already runs so)
#   connect.sh start  --connector FILE          start a worker with a connector .properties file of your own
#   connect.sh status                           is the worker up, the connector and its task RUNNING, snapshot done?
#   connect.sh stop                             stop the worker; the slot, publication and offsets stay (a restart
#                                               resumes where it stopped)
#   connect.sh drop                             stop, then drop the connector's replication slot and publication
#                                               and forget its offsets
#
# Every command takes --state DIR (default $KAPOW_CONNECT_DIR or .services/connect/default): the worker's files
# (rendered properties, offsets, log, pid, REST port) live there, so several workers can run side by side.
# Options of start (defaults in brackets):
#   --prefix P           topic prefix: topics are P.<schema>.<table> [the database name]
#   --tables LIST        table.include.list, e.g. public.orders,public.items [every table]
#   --name N             connector name [kapow-cdc-<database>]
#   --slot S             replication slot [kapow_<database>];  --publication P  [kapow_<database>]
#   --no-schemas         JsonConverter without the schema envelope (bare payloads)
#   --set KEY=VALUE      any further connector property (repeatable), e.g. --set interval.handling.mode=string
#   --bootstrap B        Kafka [$KAPOW_BOOTSTRAP, or 127.0.0.1:$KAPOW_KAFKA_PORT, or 127.0.0.1:9092]
#   --pg-host H --pg-port P --pg-user U [127.0.0.1, $KAPOW_PG_PORT or 5432, postgres]
#   --password-env VAR   the database password is read from $VAR by the worker at run time; it is never
#                        written to a file nor passed on a command line
#   --timeout S          how long start waits for the connector to run [120]
# The REST API listens on a free port of 127.0.0.1, written to DIR/rest.port.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONF="$ROOT/services/connect"
LIBS="${KAPOW_CONNECT_LIBS:-${KAPOW_SERVICES_DIR:-$ROOT/.services}/connect-libs}"
HEAP="${KAPOW_CONNECT_HEAP:-1g}"

say() { printf '[connect] %s\n' "$*"; }
die() { printf '[connect] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- options
cmd="${1:-}"; [ $# -gt 0 ] && shift
STATE="${KAPOW_CONNECT_DIR:-${KAPOW_SERVICES_DIR:-$ROOT/.services}/connect/default}"
DATABASE="" PREFIX="" TABLES="" NAME="" SLOT="" PUBLICATION="" SCHEMAS=true CONNECTOR_FILE="" PASSWORD_ENV=""
BOOTSTRAP="${KAPOW_BOOTSTRAP:-127.0.0.1:${KAPOW_KAFKA_PORT:-9092}}" PG_HOST="${KAPOW_PG_HOST:-127.0.0.1}"
PG_PORT="${KAPOW_PG_PORT:-5432}" PG_USER=postgres TIMEOUT=120
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --state) STATE="$2"; shift 2 ;;
    --database) DATABASE="$2"; shift 2 ;;
    --prefix) PREFIX="$2"; shift 2 ;;
    --tables) TABLES="$2"; shift 2 ;;
    --name) NAME="$2"; shift 2 ;;
    --slot) SLOT="$2"; shift 2 ;;
    --publication) PUBLICATION="$2"; shift 2 ;;
    --no-schemas) SCHEMAS=false; shift ;;
    --set) [[ "$2" == *=* ]] || die "--set needs KEY=VALUE, got '$2'"; EXTRA+=("$2"); shift 2 ;;
    --connector) CONNECTOR_FILE="$2"; shift 2 ;;
    --bootstrap) BOOTSTRAP="$2"; shift 2 ;;
    --pg-host) PG_HOST="$2"; shift 2 ;;
    --pg-port) PG_PORT="$2"; shift 2 ;;
    --pg-user) PG_USER="$2"; shift 2 ;;
    --password-env) PASSWORD_ENV="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    *) die "unknown option '$1' (see the header of $0)" ;;
  esac
done
STATE="$(mkdir -p "$STATE" && cd "$STATE" && pwd)"

# ---------------------------------------------------------------- helpers
worker_pid() { [ -f "$STATE/connect.pid" ] && kill -0 "$(cat "$STATE/connect.pid")" 2>/dev/null && cat "$STATE/connect.pid"; }

prop() {  # prop FILE KEY: the value of KEY in a .properties file (last one wins, as Connect reads it)
  sed -n "s/^[[:space:]]*$2[[:space:]]*=[[:space:]]*//p" "$1" | tail -n 1
}

rest() {  # rest PATH: GET from the worker's REST API, empty on any failure (python3: no curl needed)
  [ -f "$STATE/rest.port" ] || return 0
  python3 -c 'import sys, urllib.request
try:
    sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
except Exception:
    pass' "http://127.0.0.1:$(cat "$STATE/rest.port")$1"
}

connector_state() {  # prints "CONNECTOR_STATE TASK_STATE" (e.g. RUNNING RUNNING), or the first line of a trace
  local name
  name=$(prop "$STATE/connector.properties" name)
  rest "/connectors/$name/status" | python3 -c '
import json, sys
try:
    s = json.load(sys.stdin)
except ValueError:
    print("UNKNOWN NONE"); sys.exit()
tasks = s.get("tasks") or [{}]
for part in [s.get("connector", {})] + tasks:
    if part.get("state") == "FAILED":
        print("FAILED", (part.get("trace") or "no trace").splitlines()[0]); sys.exit()
print(s.get("connector", {}).get("state", "UNKNOWN"), tasks[0].get("state", "NONE"))'
}

snapshot_state() {
  if grep -q 'Snapshot completed\|Snapshot ended with SnapshotResult \[status=COMPLETED' "$STATE/connect.log" 2>/dev/null; then
    echo done
  elif grep -q 'Snapshot ended with SnapshotResult \[status=SKIPPED\|Previous snapshot has completed successfully' \
      "$STATE/connect.log" 2>/dev/null; then
    echo "done before"
  else
    echo "in progress"
  fi
}

psql_q() {  # psql_q DB SQL: one value, quiet
  local pgpass=""
  [ -n "$PASSWORD_ENV" ] && pgpass="${!PASSWORD_ENV:-}"
  PGPASSWORD="$pgpass" psql -X -q -A -t -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" \
    -U "$PG_USER" -d "$1" -c "$2"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

resolve_jars() {
  local version
  version=$(sed -n 's:.*<debezium.version>\(.*\)</debezium.version>.*:\1:p' "$CONF/pom.xml")
  [ -f "$LIBS/.complete-$version" ] && return 0
  command -v mvn >/dev/null || die "Maven is needed once to resolve the jars: apt-get install -y maven"
  say "resolving Kafka Connect + Debezium $version jars from Maven Central into $LIBS"
  rm -rf "$LIBS"
  mkdir -p "$LIBS"
  mvn -B -q -Dstyle.color=never -f "$CONF/pom.xml" dependency:copy-dependencies -DoutputDirectory="$LIBS" \
    -DincludeScope=runtime >"$LIBS/.mvn.log" 2>&1 || { tail -n 20 "$LIBS/.mvn.log" >&2; die "Maven could not resolve the jars"; }
  touch "$LIBS/.complete-$version"
}

sed_escape() { printf '%s' "$1" | sed -e 's/[\/&|]/\\&/g'; }

render_connector() {  # writes the connector properties for this start to $1
  if [ -n "$CONNECTOR_FILE" ]; then
    [ -f "$CONNECTOR_FILE" ] || die "connector file $CONNECTOR_FILE does not exist"
    cp "$CONNECTOR_FILE" "$1"
    return 0
  fi
  [ -n "$DATABASE" ] || die "start needs --database DB (or --connector FILE)"
  local safe password="" mode=all_tables
  safe=$(printf '%s' "$DATABASE" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9_\n' '_')
  [ -n "$PREFIX" ] || PREFIX="$DATABASE"
  [ -n "$NAME" ] || NAME="kapow-cdc-$DATABASE"
  [ -n "$SLOT" ] || SLOT="kapow_${safe:0:57}"
  [ -n "$PUBLICATION" ] || PUBLICATION="kapow_${safe:0:57}"
  [ -n "$PASSWORD_ENV" ] && password="\${env:$PASSWORD_ENV}"
  [ -n "$TABLES" ] && mode=filtered
  sed -e "s|@NAME@|$(sed_escape "$NAME")|" -e "s|@PG_HOST@|$(sed_escape "$PG_HOST")|" \
    -e "s|@PG_PORT@|$PG_PORT|" -e "s|@PG_USER@|$(sed_escape "$PG_USER")|" \
    -e "s|@PG_PASSWORD@|$(sed_escape "$password")|" -e "s|@DATABASE@|$(sed_escape "$DATABASE")|" \
    -e "s|@PREFIX@|$(sed_escape "$PREFIX")|" -e "s|@SLOT@|$(sed_escape "$SLOT")|" \
    -e "s|@PUBLICATION@|$(sed_escape "$PUBLICATION")|" -e "s|@PUBLICATION_MODE@|$mode|" \
    "$CONF/postgres-source.properties.in" > "$1"
  [ -n "$TABLES" ] && printf 'table.include.list=%s\n' "$TABLES" >> "$1"
  local kv
  for kv in "${EXTRA[@]+"${EXTRA[@]}"}"; do printf '%s\n' "$kv" >> "$1"; done
  # the converters' setting is the worker's; keep it beside the connector so that a restart compares both
  printf '# worker: schemas.enable=%s bootstrap=%s\n' "$SCHEMAS" "$BOOTSTRAP" >> "$1"
}

wait_running() {
  local deadline=$((SECONDS + TIMEOUT)) state
  while :; do
    worker_pid >/dev/null || { tail -n 30 "$STATE/connect.log" "$STATE/stdout.log" >&2 2>/dev/null; die "the worker exited during start (log: $STATE/connect.log)"; }
    state=$(connector_state)
    case "$state" in
      "RUNNING RUNNING") return 0 ;;
      FAILED*) die "connector failed: ${state#FAILED } (log: $STATE/connect.log)" ;;
    esac
    [ $SECONDS -lt $deadline ] || die "connector not running after $TIMEOUT s (state: $state; log: $STATE/connect.log)"
    sleep 0.5
  done
}

# ---------------------------------------------------------------- commands
start() {
  command -v java >/dev/null || die "Java 17 is needed: apt-get install -y openjdk-17-jre-headless"
  local wanted="$STATE/connector.properties.wanted"
  render_connector "$wanted"
  if worker_pid >/dev/null; then
    if cmp -s "$wanted" "$STATE/connector.properties"; then
      rm -f "$wanted"
      say "worker already running in $STATE (pid $(worker_pid))"
      wait_running
      say "connector $(prop "$STATE/connector.properties" name) RUNNING, snapshot $(snapshot_state)"
      return 0
    fi
    rm -f "$wanted"
    die "a worker with another connector config runs in $STATE (pid $(worker_pid)); stop it first"
  fi
  local db wal
  db=$(prop "$wanted" database.dbname)
  if ! wal=$(psql_q "$db" "SHOW wal_level" 2>&1); then
    rm -f "$wanted"
    die "cannot reach database $db on $PG_HOST:$PG_PORT: $(printf '%s' "$wal" | tr '\n' ' ')"
  fi
  if [ "$wal" != logical ]; then
    rm -f "$wanted"
    die "wal_level is '$wal' on $PG_HOST:$PG_PORT; logical decoding needs 'logical' (scripts/services.sh start sets it)"
  fi
  mv "$wanted" "$STATE/connector.properties"
  chmod 600 "$STATE/connector.properties"
  resolve_jars
  local port
  port=$(free_port)
  echo "$port" > "$STATE/rest.port"
  local schemas
  schemas=$(sed -n 's/^# worker: schemas.enable=\([a-z]*\) .*/\1/p' "$STATE/connector.properties")
  sed -e "s|@STATE@|$(sed_escape "$STATE")|" -e "s|@BOOTSTRAP@|$(sed_escape "$BOOTSTRAP")|" \
    -e "s|@REST_PORT@|$port|" -e "s|@SCHEMAS@|${schemas:-true}|" "$CONF/worker.properties.in" > "$STATE/worker.properties"
  : > "$STATE/connect.log"
  say "starting Kafka Connect (standalone) with $(prop "$STATE/connector.properties" name): database $db, topics $(prop "$STATE/connector.properties" topic.prefix).<schema>.<table>, REST 127.0.0.1:$port"
  nohup java -Xms256m "-Xmx$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$CONF/log4j2.properties" -Dconnect.logs.dir="$STATE" \
    -cp "$LIBS/*" org.apache.kafka.connect.cli.ConnectStandalone \
    "$STATE/worker.properties" "$STATE/connector.properties" > "$STATE/stdout.log" 2>&1 &
  echo $! > "$STATE/connect.pid"
  wait_running
  say "connector $(prop "$STATE/connector.properties" name) RUNNING (pid $(worker_pid)), snapshot $(snapshot_state)"
}

status() {
  if ! worker_pid >/dev/null; then say "worker stopped ($STATE)"; return 0; fi
  say "worker running (pid $(worker_pid)) in $STATE, REST 127.0.0.1:$(cat "$STATE/rest.port" 2>/dev/null)"
  say "connector $(prop "$STATE/connector.properties" name): $(connector_state), snapshot $(snapshot_state)"
}

stop() {
  local pid
  if pid=$(worker_pid); then
    kill "$pid"
    local i
    for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; say "worker did not stop within 30 s: killed"; fi
    rm -f "$STATE/connect.pid"
    say "worker stopped (slot, publication and offsets kept in $STATE)"
  else
    rm -f "$STATE/connect.pid"
    say "worker not running ($STATE)"
  fi
}

drop() {
  stop
  [ -f "$STATE/connector.properties" ] || { say "nothing to drop in $STATE"; return 0; }
  local db slot publication
  db=$(prop "$STATE/connector.properties" database.dbname)
  slot=$(prop "$STATE/connector.properties" slot.name)
  publication=$(prop "$STATE/connector.properties" publication.name)
  PG_HOST=$(prop "$STATE/connector.properties" database.hostname)
  PG_PORT=$(prop "$STATE/connector.properties" database.port)
  PG_USER=$(prop "$STATE/connector.properties" database.user)
  [[ "$slot" =~ ^[a-z0-9_]*$ ]] || die "slot name '$slot' is not a valid replication slot name"
  [[ "$publication" =~ ^[A-Za-z0-9_]*$ ]] || die "publication name '$publication' is not a plain identifier"
  if [ -n "$slot" ] && [ "$(psql_q postgres "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot'")" = 0 ]; then
    say "no replication slot $slot"
  elif [ -n "$slot" ]; then
    # the walsender of a killed worker may linger a moment: end it, then drop the slot
    psql_q postgres "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '$slot' AND active_pid IS NOT NULL" >/dev/null || true
    local i out
    for ((i = 0; i < 50; i++)); do
      out=$(psql_q postgres "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE slot_name = '$slot' AND NOT active" 2>&1) && break
      sleep 0.2
    done
    [ "$(psql_q postgres "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot'")" = 0 ] \
      || die "replication slot $slot is still there: $out"
    say "replication slot $slot dropped"
  fi
  if [ -n "$publication" ] && psql_q "$db" "DROP PUBLICATION IF EXISTS \"$publication\"" >/dev/null 2>&1; then
    say "publication $publication dropped from $db"
  fi
  rm -f "$STATE/connect.offsets" "$STATE/connector.properties"
  say "offsets forgotten: the next start snapshots again"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  drop) drop ;;
  *) die "usage: connect.sh start|status|stop|drop [--state DIR] [--database DB ...] (see the header of $0)" ;;
esac
