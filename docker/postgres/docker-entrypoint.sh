#!/usr/bin/env bash
# The official postgres entrypoint's contract: on an empty data directory, initdb with POSTGRES_USER
# (default postgres) and POSTGRES_PASSWORD (required), create POSTGRES_DB (default the user), trust
# local socket connections and require a password over TCP; then run postgres as the postgres user.
set -euo pipefail
if [[ "${1:-}" != "postgres" ]]; then
  exec "$@"
fi
if [[ "$(id -u)" == "0" ]]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  if [[ -z "${POSTGRES_PASSWORD:-}" ]]; then
    echo "Error: POSTGRES_PASSWORD must be set for a new database" >&2
    exit 1
  fi
  initdb --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 -D "$PGDATA"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [[ "$db" != "postgres" ]]; then
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    psql -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres -c "CREATE DATABASE \"$db\""
    pg_ctl -D "$PGDATA" -m fast -w stop
  fi
fi
shift
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
