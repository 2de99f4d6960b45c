#!/usr/bin/env bash
# Starts PostgreSQL on 127.0.0.1:5432 for the integration tests (DESIGN section 9) and creates the
# database `test`. Idempotent: a server that already answers is used as it is, never stopped.
set -euo pipefail
command -v pg_ctlcluster >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
D=/tmp/bandit-router-pg
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  install -d -o postgres -g postgres "$D" "$D/sock"
  [ -f "$D/data/PG_VERSION" ] ||
    su postgres -c "$PGBIN/initdb -D $D/data -U postgres --auth=trust -E UTF8 --locale=C.UTF-8" >/dev/null
  su postgres -c "$PGBIN/pg_ctl -D $D/data -l $D/server.log -w \
    -o \"-c listen_addresses=127.0.0.1 -p 5432 -k $D/sock -c fsync=off\" start" >/dev/null
fi
psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname='test'" | grep -q 1 ||
  psql -h 127.0.0.1 -U postgres -qc 'create database test'
echo "PostgreSQL is up: postgresql+psycopg://postgres@127.0.0.1:5432/test"
