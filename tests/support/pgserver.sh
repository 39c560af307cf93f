#!/usr/bin/env bash
# Throwaway PostgreSQL 15 cluster for the mlops.mlflow tests.
#
#   tests/support/pgserver.sh start   # idempotent; initdb on first use
#   tests/support/pgserver.sh stop    # stop the server and delete the cluster
#   tests/support/pgserver.sh url     # print the admin URL the tests use
#   tests/support/pgserver.sh status
#
# The cluster runs as the OS user "postgres" (initdb refuses root) from a temp
# directory, listens on 127.0.0.1 only and uses scram-sha-256 password auth.
# The test role "mlflow_test" (CREATEDB) has a password with URL-special
# characters on purpose, so the tests prove it is quoted and never leaked.
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGROOT=${MLFLOW_TEST_PG_DIR:-/tmp/mlops-mlflow-pg}
PGDATA_DIR="$PGROOT/data"
PGPORT=${MLFLOW_TEST_PG_PORT:-54329}
PGHOST_ADDR=127.0.0.1
PGUSER_NAME=mlflow_test
PGUSER_PASSWORD='p@ss:w/rd%'
# URL-quoted form of the password above.
PGUSER_PASSWORD_Q='p%40ss%3Aw%2Frd%25'
RUN_AS=postgres

as_pg() {
    if [ "$(id -un)" = "$RUN_AS" ]; then
        "$@"
    elif [ "$(id -u)" = 0 ]; then
        runuser -u "$RUN_AS" -- "$@"
    else
        # Not root: run the cluster as the current user.
        "$@"
    fi
}

is_running() {
    [ -f "$PGDATA_DIR/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

url() {
    echo "postgresql+psycopg2://${PGUSER_NAME}:${PGUSER_PASSWORD_Q}@${PGHOST_ADDR}:${PGPORT}/postgres"
}

start() {
    if is_running; then
        echo "PostgreSQL already running on ${PGHOST_ADDR}:${PGPORT} ($PGDATA_DIR)" >&2
        return 0
    fi
    if [ ! -x "$PGBIN/initdb" ]; then
        echo "PostgreSQL binaries not found in $PGBIN (apt-get install postgresql)" >&2
        return 1
    fi
    mkdir -p "$PGROOT"
    if [ "$(id -u)" = 0 ]; then
        chown "$RUN_AS:" "$PGROOT"
    fi
    chmod 700 "$PGROOT"
    if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
        local pwfile
        pwfile=$(mktemp "$PGROOT/.pw.XXXXXX")
        # superuser password: not used by the tests, only needed for scram auth
        head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$pwfile"
        [ "$(id -u)" = 0 ] && chown "$RUN_AS:" "$pwfile"
        as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=scram-sha-256 \
            --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 >"$PGROOT/initdb.log" 2>&1 \
            || { cat "$PGROOT/initdb.log" >&2; rm -f "$pwfile"; return 1; }
        rm -f "$pwfile"
        cat >>"$PGDATA_DIR/postgresql.conf" <<CONF
listen_addresses = '${PGHOST_ADDR}'
port = ${PGPORT}
unix_socket_directories = '${PGROOT}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 50
CONF
        cat >"$PGDATA_DIR/pg_hba.conf" <<HBA
local   all   postgres                  peer
local   all   all                       scram-sha-256
host    all   all   127.0.0.1/32        scram-sha-256
HBA
        local fresh=1
    fi
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGROOT/server.log" -w -t 60 start >/dev/null \
        || { tail -20 "$PGROOT/server.log" >&2; return 1; }
    if [ "${fresh:-0}" = 1 ]; then
        as_pg "$PGBIN/psql" -h "$PGROOT" -p "$PGPORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
            -c "CREATE ROLE ${PGUSER_NAME} LOGIN CREATEDB PASSWORD '${PGUSER_PASSWORD}'" >/dev/null
    fi
    echo "PostgreSQL running on ${PGHOST_ADDR}:${PGPORT} ($PGDATA_DIR)" >&2
}

stop() {
    if is_running; then
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null
    fi
    rm -rf "$PGROOT"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) url ;;
    status) if is_running; then echo running; else echo stopped; exit 3; fi ;;
    *) echo "usage: $0 start|stop|url|status" >&2; exit 2 ;;
esac
