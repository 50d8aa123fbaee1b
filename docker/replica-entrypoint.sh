#!/bin/bash
# Compose demo, replica: on first start, clone the primary with
# `pg_basebackup -R` (which writes standby.signal and primary_conninfo), then
# run PostgreSQL. Later starts, also after Switchyard promoted this node, only
# run it. Runs as the postgres user (compose.yaml: user: postgres).
set -euo pipefail
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -q -h primary -p 5432; do
    echo "replica: waiting for the primary"
    sleep 1
  done
  PGPASSWORD="${REPLICATION_PASSWORD:?}" pg_basebackup -h primary -p 5432 -U replicator \
    -D "$PGDATA" -R -X stream --checkpoint=fast
  chmod 0700 "$PGDATA"
fi
exec postgres -c hot_standby=on
