#!/usr/bin/env bash
# Throwaway MariaDB server for the mlops.mlflow tests (Debian's mariadb-server package).
#
#   tests/support/mariadbserver.sh start   # idempotent; mariadb-install-db on first use
#   tests/support/mariadbserver.sh stop    # stop the server and delete its data directory
#   tests/support/mariadbserver.sh url     # print the admin URL the tests use
#   tests/support/mariadbserver.sh status
#
# It never uses the distribution's mariadb service or /etc/mysql: the server runs
# with --no-defaults from a temp directory (data, socket, pid file, log), as the OS
# user "mysql" when started by root (else as the current user), listens on
# 127.0.0.1 only and uses real password authentication. The server's root account
# is reachable only through the private unix socket (unix_socket auth).
#
# The test user "mlflow_test" has a password with URL-special characters on
# purpose (the tests prove it is quoted and never leaked) and ALL PRIVILEGES on the
# databases named mlflow\_t\_* only: enough to CREATE/DROP those databases and for
# MLflow's migrations, which create triggers (MLflow 3.12+; TRIGGER privilege) -
# and no global privilege.
#
# Binary logging: left OFF (--skip-log-bin, MariaDB's default). With binary logging
# ON, MariaDB refuses CREATE TRIGGER by a user without SUPER unless the server runs
# with log_bin_trust_function_creators=ON - that is a production concern (see the
# db_schema module notes), not something a throwaway test server needs. Set
# MLFLOW_TEST_MYSQL_BINLOG=1 to start the server with binary logging and
# log_bin_trust_function_creators=ON instead, to exercise that configuration.
set -euo pipefail

MYROOT=${MLFLOW_TEST_MYSQL_DIR:-/tmp/mlops-mlflow-mariadb}
MYDATA_DIR="$MYROOT/data"
MYSOCKET="$MYROOT/mysqld.sock"
MYPIDFILE="$MYROOT/mysqld.pid"
MYLOG="$MYROOT/server.log"
MYPORT=${MLFLOW_TEST_MYSQL_PORT:-33069}
MYHOST_ADDR=127.0.0.1
MYUSER_NAME=mlflow_test
MYUSER_PASSWORD='p@ss:w/rd%'
# URL-quoted form of the password above.
MYUSER_PASSWORD_Q='p%40ss%3Aw%2Frd%25'
# Databases the test user may create (LIKE pattern: _ escaped).
MYDB_PATTERN='mlflow\_t\_%'
RUN_AS=mysql

MARIADBD=${MARIADBD:-/usr/sbin/mariadbd}

server_user() {
    if [ "$(id -u)" = 0 ]; then echo "$RUN_AS"; else id -un; fi
}

client() {
    mariadb --no-defaults --protocol=socket --socket="$MYSOCKET" -u root "$@"
}

server_pid() {
    local pid
    [ -f "$MYPIDFILE" ] || return 1
    pid=$(cat "$MYPIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    # a recycled pid must not count
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--datadir=$MYDATA_DIR" || return 1
    echo "$pid"
}

is_running() {
    server_pid >/dev/null && mariadb-admin --no-defaults --protocol=socket --socket="$MYSOCKET" -u root \
        --connect-timeout=2 ping >/dev/null 2>&1
}

url() {
    echo "mysql+pymysql://${MYUSER_NAME}:${MYUSER_PASSWORD_Q}@${MYHOST_ADDR}:${MYPORT}/"
}

start() {
    if is_running; then
        echo "MariaDB already running on ${MYHOST_ADDR}:${MYPORT} ($MYDATA_DIR)" >&2
        return 0
    fi
    if [ ! -x "$MARIADBD" ] || ! command -v mariadb-install-db >/dev/null; then
        echo "MariaDB binaries not found (apt-get install mariadb-server mariadb-client)" >&2
        return 1
    fi
    local user
    user=$(server_user)
    # A server of an earlier run that died half-way: start from scratch.
    if [ -f "$MYPIDFILE" ] && ! server_pid >/dev/null; then
        rm -f "$MYPIDFILE" "$MYSOCKET"
    fi
    mkdir -p "$MYROOT"
    chmod 700 "$MYROOT"
    [ "$(id -u)" = 0 ] && chown "$user:" "$MYROOT"
    local fresh=0
    if [ ! -d "$MYDATA_DIR/mysql" ]; then
        rm -rf "$MYDATA_DIR"
        mariadb-install-db --no-defaults --datadir="$MYDATA_DIR" --user="$user" \
            --auth-root-authentication-method=socket --auth-root-socket-user="$(id -un)" \
            --skip-test-db --skip-name-resolve >"$MYROOT/install-db.log" 2>&1 \
            || { cat "$MYROOT/install-db.log" >&2; return 1; }
        fresh=1
    fi
    local binlog=(--skip-log-bin)
    if [ "${MLFLOW_TEST_MYSQL_BINLOG:-0}" = 1 ]; then
        binlog=(--log-bin="$MYROOT/binlog" --server-id=1 --log-bin-trust-function-creators=ON)
    fi
    # Detached (own session, no inherited stdio) so callers capturing our output do not hang.
    setsid "$MARIADBD" --no-defaults --user="$user" --datadir="$MYDATA_DIR" \
        --socket="$MYSOCKET" --pid-file="$MYPIDFILE" --log-error="$MYLOG" \
        --port="$MYPORT" --bind-address="$MYHOST_ADDR" --skip-name-resolve \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
        --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --innodb-buffer-pool-size=128M \
        --max-connections=100 "${binlog[@]}" </dev/null >/dev/null 2>&1 &
    local i
    for i in $(seq 1 120); do
        if is_running; then break; fi
        if [ "$i" -gt 10 ] && ! pgrep -f -- "--datadir=$MYDATA_DIR" >/dev/null; then
            echo "MariaDB did not start:" >&2
            tail -20 "$MYLOG" >&2 || true
            return 1
        fi
        sleep 0.5
    done
    if ! is_running; then
        echo "MariaDB did not answer within 60 s:" >&2
        tail -20 "$MYLOG" >&2 || true
        return 1
    fi
    if [ "$fresh" = 1 ]; then
        client -e "CREATE USER '${MYUSER_NAME}'@'%' IDENTIFIED BY '${MYUSER_PASSWORD}';
                   GRANT ALL PRIVILEGES ON \`${MYDB_PATTERN}\`.* TO '${MYUSER_NAME}'@'%';"
    fi
    echo "MariaDB running on ${MYHOST_ADDR}:${MYPORT} ($MYDATA_DIR)" >&2
}

stop() {
    local pid i
    if pid=$(server_pid); then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 120); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
    fi
    rm -rf "$MYROOT"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    url) url ;;
    status) if is_running; then echo running; else echo stopped; exit 3; fi ;;
    *) echo "usage: $0 start|stop|url|status" >&2; exit 2 ;;
esac
