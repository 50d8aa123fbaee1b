#!/usr/bin/env bash
# Instructions per transaction of the proxy under callgrind, as
# docs/benchmarks.md counts them: a throw-away PostgreSQL, the release
# binary under valgrind, `pgbench -c 4 -j 2` through it, and the runtime
# thread's instructions over 24,000 transactions less those over 8,000,
# divided by 16,000 (so logins and start-up are out).
#
# CLIENTS=64 runs that many clients instead of 4 (a divisor of 8,000): more
# than the pool's 20 servers, so clients wait for one, and the count
# includes the waiting checkout.
#
#   bash benches/callgrind.sh [BINARY] [pgbench options]
#   bash benches/callgrind.sh target/release/switchyard -S -M extended
#
# BINARY is started as `BINARY --config FILE`: the bare forwarder of
# examples/bare_forwarder.rs (FORWARDER=tokio or epoll) is counted the same
# way, as the floor under any relay (docs/benchmarks.md, sixteenth round).
#
# Only the runtime's thread is counted (--separate-threads=yes, thread 1):
# server logins derive SCRAM keys on tokio's blocking pool, about 21.6 M
# instructions each, and one inside a window would move the result by
# 1,350 per transaction. Needs valgrind, pgbench and PostgreSQL's server
# binaries (PG_BIN, default /usr/lib/postgresql/15/bin). Run as root, it
# runs PostgreSQL as the `postgres` user.
#
# It also counts the atomic read-modify-writes the binary's own code ran
# per transaction (its `lock`-prefixed and `xchg` instructions, found with
# objdump): callgrind counts one as one instruction, but each costs about
# 5 ns here, what dozens of plain instructions do.
#
# KEEP=1 keeps the scratch directory and prints its path: callgrind's two
# dumps are cg.out.1-01 and cg.out.2-01 there. With VALGRIND_OPTS="--cache-sim=yes
# --branch-sim=yes" their `summary:` lines also hold the cache misses and
# branches (the `events:` line names the columns).
set -euo pipefail

bin=${1:-target/release/switchyard}
shift || true
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(-S)
bin=$(realpath "$bin")
clients=${CLIENTS:-4}
if [ "$clients" -lt 1 ] || [ $((8000 % clients)) -ne 0 ]; then
    echo "CLIENTS must divide 8000, not $clients" >&2
    exit 2
fi
pg_port=${PG_PORT:-55432}
proxy_port=${PROXY_PORT:-56432}
. "$(dirname "$0")/scratch.sh"

dir=$(mktemp -d /tmp/switchyard-callgrind.XXXXXX)
cleanup() {
    # A binary that dies of the TERM (the bare forwarder) ends the wait
    # with a failure, which must not skip the rest of the cleanup.
    if [ -n "${vg:-}" ] && kill "$vg" 2>/dev/null; then wait "$vg" 2>/dev/null || true; fi
    scratch_pg_stop "$dir"
    if [ -n "${KEEP:-}" ]; then echo "kept: $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
scratch_pg "$dir" "$pg_port"
scratch_proxy_config "$dir" "$pg_port" "$proxy_port"

valgrind --tool=callgrind --separate-threads=yes --dump-instr=yes \
    --callgrind-out-file="$dir/cg.out" "$bin" --config "$dir/switchyard.toml" \
    > "$dir/proxy.log" 2>&1 &
vg=$!
wait_for_proxy "$proxy_port"

# `run N`: N transactions in all, split among the clients.
run() {
    PGPASSWORD=app pgbench -h 127.0.0.1 -p "$proxy_port" -U app -n "${args[@]}" \
        -c "$clients" -j 2 -t $(( ($1 + clients - 1) / clients )) postgres \
        > "$dir/pgbench.$1.log" 2>&1
}
# Warm-up opens the pool's connections; each zero waits a moment, since
# valgrind takes the command only when the proxy next runs.
run 2000
callgrind_control -z "$vg" >/dev/null 2>&1; sleep 2; run 8000
callgrind_control -d first "$vg" >/dev/null 2>&1
callgrind_control -z "$vg" >/dev/null 2>&1; sleep 2; run 24000
callgrind_control -d second "$vg" >/dev/null 2>&1

first=$(grep -m1 '^summary' "$dir/cg.out.1-01" | awk '{print $2}')
second=$(grep -m1 '^summary' "$dir/cg.out.2-01" | awk '{print $2}')
echo "pgbench ${args[*]} -c $clients: runtime thread $first instructions over 8000 transactions, $second over 24000"
echo "per transaction: $(( (second - first) / 16000 ))"

# Executions of the binary's locked instructions in a dump: callgrind's
# per-instruction costs (absolute hex addresses, or decimal steps from the
# last) at the addresses objdump lists; a call's inclusive cost is skipped.
objdump -d --no-show-raw-insn "$bin" |
    awk '$2 == "lock" || $2 ~ /^xchg/ { sub(":", "", $1); print $1 }' > "$dir/locked"
locked_runs() {
    awk -v bin="$bin" '
        function hex(s,   i, n) {
            n = 0
            for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
            return n
        }
        FNR == NR { locked[hex($1)] = 1; next }
        # Objects are named once, in an ob= or a cob= line, then by number.
        function object(o) {
            if (match(o, /^\([0-9]+\)/)) {
                id = substr(o, 1, RLENGTH)
                if (length(o) > RLENGTH) names[id] = substr(o, RLENGTH + 2)
                o = names[id]
            }
            return o
        }
        /^cob=/ { object(substr($0, 5)); next }
        /^ob=/ { ours = (object(substr($0, 4)) == bin); next }
        /^calls=/ { skip = 1; next }
        /^(0x|[-+*0-9])/ {
            t = $1
            if (t ~ /^0x/) a = hex(tolower(substr(t, 3)))
            else if (t ~ /^\+/) a = last + substr(t, 2)
            else if (t ~ /^-/) a = last - substr(t, 2)
            else if (t != "*") a = t + 0
            last = a
            if (skip) { skip = 0; next }
            if (ours && NF >= 3 && (a in locked)) n += $3
        }
        END { print n + 0 }' "$dir/locked" "$1"
}
first=$(locked_runs "$dir/cg.out.1-01")
second=$(locked_runs "$dir/cg.out.2-01")
awk -v a="$first" -v b="$second" 'BEGIN {
    printf "atomic read-modify-writes of the binary'"'"'s own code per transaction: %.1f\n", (b - a) / 16000 }'
