#!/bin/bash
# Compose demo, primary only: the postgres image runs this once, when it
# creates the data directory (/docker-entrypoint-initdb.d). Creates the roles
# and database of the demo and lets the replica stream WAL. The passwords come
# from the primary's environment in compose.yaml.
set -e
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  --set=replicator_pw="${REPLICATION_PASSWORD:?}" \
  --set=switchyard_pw="${SWITCHYARD_PASSWORD:?}" \
  --set=app_pw="${APP_PASSWORD:?}" <<'SQL'
CREATE ROLE replicator WITH LOGIN REPLICATION PASSWORD :'replicator_pw';
CREATE ROLE switchyard WITH LOGIN SUPERUSER PASSWORD :'switchyard_pw';
CREATE ROLE app WITH LOGIN PASSWORD :'app_pw';
CREATE DATABASE app OWNER app;
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
