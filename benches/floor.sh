#!/usr/bin/env bash
# What the event loop alone costs, in CPU per transaction: the two bare
# forwarders of examples/bare_forwarder.rs (tokio's current-thread runtime,
# and one thread over epoll), PgBouncer in transaction mode and the proxy,
# each in front of the same throw-away PostgreSQL, each in a session of its
# own, run in turn for ROUNDS rounds (default 4) of `pgbench -S -c 16 -j 2
# -T 8`. CPU per transaction (utime + stime, and utime alone) is read from
# /proc/PID/stat around each run.
#
#   cargo build --release --bin switchyard --example bare_forwarder
#   bash benches/floor.sh
#
# Needs what benches/scratch.sh needs, and pgbouncer (PGBOUNCER, default
# /usr/sbin/pgbouncer). Run as root, PgBouncer runs as `postgres`.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/scratch.sh

rounds=${ROUNDS:-4}
secs=${SECS:-8}
pg_port=${PG_PORT:-55541}
pgbouncer=${PGBOUNCER:-/usr/sbin/pgbouncer}
forwarder=target/release/examples/bare_forwarder
proxy=target/release/switchyard
for bin in "$forwarder" "$proxy" "$pgbouncer"; do
    [ -x "$bin" ] || { echo "missing $bin (see the usage at the top)" >&2; exit 2; }
done

dir=$(mktemp -d /tmp/switchyard-floor.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    scratch_pg_stop "$dir"
    rm -rf "$dir"
}
trap cleanup EXIT
scratch_pg "$dir" "$pg_port"

names=(epoll tokio pgbouncer switchyard)
declare -A port
port[epoll]=$((pg_port + 1)); port[tokio]=$((pg_port + 2))
port[pgbouncer]=$((pg_port + 3)); port[switchyard]=$((pg_port + 4))

for m in epoll tokio switchyard; do
    scratch_proxy_config "$dir" "$pg_port" "${port[$m]}"
    [ "$m" = switchyard ] || mv "$dir/switchyard.toml" "$dir/$m.toml"
done
FORWARDER=epoll setsid "$forwarder" --config "$dir/epoll.toml" >"$dir/epoll.log" 2>&1 &
pids+=($!)
FORWARDER=tokio setsid "$forwarder" --config "$dir/tokio.toml" >"$dir/tokio.log" 2>&1 &
pids+=($!)
setsid "$proxy" --config "$dir/switchyard.toml" >"$dir/switchyard.log" 2>&1 &
pids+=($!)

printf '"app" "app"\n' >"$dir/userlist.txt"
cat >"$dir/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=$pg_port dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${port[pgbouncer]}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = 20
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir/pgbouncer.ini" "$dir/userlist.txt"
    setsid runuser -u postgres -- "$pgbouncer" "$dir/pgbouncer.ini" >/dev/null 2>&1 &
else
    setsid "$pgbouncer" "$dir/pgbouncer.ini" >/dev/null 2>&1 &
fi
pids+=($!)

for m in "${names[@]}"; do wait_for_proxy "${port[$m]}"; done
pid_of() {
    case $1 in
        pgbouncer) cat "$dir/pgbouncer.pid" ;;
        *) pgrep -f -- "--config $dir/$1.toml" | head -1 ;;
    esac
}
# utime and stime, in clock ticks.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

run() { # run NAME: one pgbench run; prints NAME TPS ALL_US USER_US
    local m=$1 pid out before after txns tps
    pid=$(pid_of "$m")
    before=$(ticks "$pid")
    out=$(PGPASSWORD=app pgbench -h 127.0.0.1 -p "${port[$m]}" -U app -n -S \
        -c 16 -j 2 -T "$secs" postgres 2>&1)
    after=$(ticks "$pid")
    txns=$(echo "$out" | awk '/transactions actually processed/ {split($NF, a, "/"); print a[1]}')
    tps=$(echo "$out" | awk '/^tps/ {print $3; exit}')
    awk -v m="$m" -v tps="$tps" -v t="$txns" -v hz="$hz" -v b="$before" -v a="$after" 'BEGIN {
        split(b, x, " "); split(a, y, " ")
        u = (y[1] - x[1]) / hz * 1e6 / t; s = (y[2] - x[2]) / hz * 1e6 / t
        printf "%s %.0f %.2f %.2f\n", m, tps, u + s, u }'
}

for m in "${names[@]}"; do run "$m" >/dev/null; done # warm-up
for r in $(seq 1 "$rounds"); do
    for m in "${names[@]}"; do run "$m"; done | sed "s/^/$r /"
done | tee "$dir/runs"
echo
echo "medians over $rounds rounds: TPS, CPU µs per transaction (all / user space);"
echo "then paired with PgBouncer's run of the same round (geometric means)"
awk -v rounds="$rounds" '
    { tps[$1, $2] = $3; cpu[$1, $2] = $4; usr[$1, $2] = $5 }
    function median(a, m,   v, n, i, j, t) {
        n = 0
        for (i = 1; i <= rounds; i++) v[++n] = a[i, m]
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
        return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function paired(a, m,   i, l) {
        l = 0
        for (i = 1; i <= rounds; i++) l += log(a[i, m] / a[i, "pgbouncer"])
        return exp(l / rounds)
    }
    END {
        printf "%-11s %8s %7s %7s %11s %11s %12s\n", "", "TPS", "CPU", "user", "paired TPS", "paired CPU", "paired user"
        split("epoll tokio pgbouncer switchyard", order, " ")
        for (k = 1; k <= 4; k++) {
            m = order[k]
            printf "%-11s %8.0f %7.2f %7.2f %11.2f %11.2f %12.2f\n", m, median(tps, m), median(cpu, m), median(usr, m), paired(tps, m), paired(cpu, m), paired(usr, m)
        }
    }' "$dir/runs"
