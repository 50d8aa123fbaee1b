# Sourced by the shell harnesses in benches/: a throw-away PostgreSQL with
# pgbench's tables, and a configuration file for the proxy in front of it.
# Needs PostgreSQL's server binaries (PG_BIN, default
# /usr/lib/postgresql/15/bin), psql and pgbench. Run as root, it runs
# PostgreSQL as the `postgres` user.

pg_bin=${PG_BIN:-/usr/lib/postgresql/15/bin}

as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else sh -c "$*"; fi; }

# scratch_pg DIR PORT: initdb into DIR/pg, start it on 127.0.0.1:PORT with
# SCRAM, create the proxy's user `app`, and `pgbench -i -s 10`.
scratch_pg() {
    local dir=$1 port=$2
    chmod 755 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$pg_bin/initdb -D $dir/pg -A trust -U postgres" >/dev/null
    cat >> "$dir/pg/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
password_encryption = 'scram-sha-256'
CONF
    printf 'host all all 127.0.0.1/32 scram-sha-256\nlocal all all trust\n' > "$dir/pg/pg_hba.conf"
    as_pg "$pg_bin/pg_ctl -D $dir/pg -l $dir/pg.log -w start" >/dev/null
    psql -q -h "$dir" -p "$port" -U postgres \
        -c "ALTER USER postgres PASSWORD 'postgres'" \
        -c "CREATE USER app PASSWORD 'app'" \
        -c "GRANT ALL ON SCHEMA public TO app" >/dev/null
    PGPASSWORD=app pgbench -h 127.0.0.1 -p "$port" -U app -i -s 10 -q postgres >/dev/null 2>&1
}

# scratch_pg_stop DIR
scratch_pg_stop() {
    as_pg "$pg_bin/pg_ctl -D $1/pg -m immediate stop" >/dev/null 2>&1 || true
}

# scratch_proxy_config DIR PG_PORT PROXY_PORT: DIR/switchyard.toml, the
# proxy on PROXY_PORT in transaction mode, pool 20, SCRAM.
scratch_proxy_config() {
    cat > "$1/switchyard.toml" <<CONF
[proxy]
listen = "127.0.0.1:$3"
pool_mode = "transaction"
default_pool_size = 20
auth_type = "scram-sha-256"

[[users]]
name = "app"
password = "app"

[cluster]
nodes = ["127.0.0.1:$2"]
user = "postgres"
password = "postgres"

[http]
listen = "127.0.0.1:0"
CONF
}

# wait_for_proxy PORT: until a login through the proxy works (2 minutes).
wait_for_proxy() {
    for _ in $(seq 1 120); do
        PGPASSWORD=app psql -h 127.0.0.1 -p "$1" -U app -c 'SELECT 1' postgres \
            >/dev/null 2>&1 && return 0
        sleep 1
    done
    echo "the proxy on port $1 did not accept a login" >&2
    return 1
}
