#!/bin/sh
# The official postgres image's entrypoint, for the parts testcontainers and pytest-llmtrace rely on: on first start
# it runs initdb with POSTGRES_USER and POSTGRES_PASSWORD, creates POSTGRES_DB, runs /docker-entrypoint-initdb.d/*.sql
# and *.sh, and then serves on all interfaces of the container with password authentication (the host publishes the
# port on 127.0.0.1 only). The password is never echoed: it goes to initdb through a file that is removed at once.
set -eu

PGDATA=${PGDATA:-/var/lib/postgresql/data}
if [ "${1:-}" = postgres ]; then
    shift
fi

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
        echo "Error: POSTGRES_PASSWORD is not set (or set POSTGRES_HOST_AUTH_METHOD=trust)" >&2
        exit 1
    fi
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" --no-sync >/dev/null
    rm -f "$pwfile"
    printf 'host all all all %s\n' "${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"

    # A server on the socket only, so nothing connects before the database exists.
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses='' -k /var/run/postgresql" --wait --silent start
    psql="psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --host=/var/run/postgresql --username=$POSTGRES_USER"
    if [ "$POSTGRES_DB" != postgres ]; then
        $psql --dbname=postgres --set db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sql) $psql --dbname="$POSTGRES_DB" -f "$f" ;;
            *.sh) . "$f" ;;
        esac
    done
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
    echo "PostgreSQL init process complete; ready for start up."
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' -k /var/run/postgresql "$@"
