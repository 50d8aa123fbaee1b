#!/usr/bin/env bash
# The release binary optimised with a profile of its own hot path (PGO):
# 3-10 % less CPU per transaction than `cargo build --release` in this
# project's benchmarks (docs/benchmarks.md, the eleventh round). It
#  1. builds the binary instrumented (-Cprofile-generate),
#  2. runs pgbench through it against a throw-away PostgreSQL: the
#     workloads `cargo bench --bench shipped` measures (-S in the simple,
#     extended and prepared protocols, 16 and 64 clients, drivers' SETs),
#     pgbench's default read-write transaction, and -S over TLS (code no
#     run reaches is laid out and optimised as cold),
#  3. merges the profile it wrote at exit, and
#  4. builds the binary again with it (-Cprofile-use).
#
#   bash benches/pgo.sh            # prints the binary's path: target/pgo/switchyard
#
# The two builds have target directories of their own under target/pgo, so
# `cargo build --release` is not rebuilt by them. Needs the llvm-tools
# component of the toolchain that builds (it is added with rustup when
# missing), openssl, and what benches/scratch.sh needs. About 8 minutes here.
# RUSTFLAGS from the environment are kept, in both builds.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/scratch.sh

out=$(pwd)/target/pgo
pg_port=${PG_PORT:-55433}
proxy_port=${PROXY_PORT:-56433}
secs=${PGO_SECS:-5}

host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
    rustup component add llvm-tools
fi

mkdir -p "$out"
rm -rf "$out/raw"
echo "== 1/4 instrumented build" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$out/raw" \
    cargo build --release --locked --bin switchyard --target-dir "$out/generate" >&2

dir=$(mktemp -d /tmp/switchyard-pgo.XXXXXX)
cleanup() {
    [ -n "${proxy:-}" ] && kill "$proxy" 2>/dev/null && wait "$proxy" 2>/dev/null
    scratch_pg_stop "$dir"
    rm -rf "$dir"
}
trap cleanup EXIT
scratch_pg "$dir" "$pg_port"
scratch_proxy_config "$dir" "$pg_port" "$proxy_port"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -keyout "$dir/server.key" -out "$dir/server.crt" 2>/dev/null
cat >> "$dir/switchyard.toml" <<CONF

[proxy.tls]
mode = "allow"
cert_file = "$dir/server.crt"
key_file = "$dir/server.key"
CONF

echo "== 2/4 training runs, ${secs}s each" >&2
"$out/generate/release/switchyard" --config "$dir/switchyard.toml" > "$dir/proxy.log" 2>&1 &
proxy=$!
wait_for_proxy "$proxy_port"
train() {
    echo "   pgbench $*" >&2
    PGPASSWORD=app pgbench -h 127.0.0.1 -p "$proxy_port" -U app -n -j 2 -T "$secs" "$@" \
        postgres > "$dir/pgbench.log" 2>&1 || { cat "$dir/pgbench.log" >&2; exit 1; }
}
train -S -c 16
train -S -c 64
train -S -M extended -c 16
train -S -M prepared -c 16
train -c 64 -D configured=0 -f benches/select_with_sets.pgbench
train -c 8
PGSSLMODE=require train -S -c 16
# The profile is written as the process exits, and SIGTERM makes it exit.
kill -TERM "$proxy"
wait "$proxy" || true
proxy=

echo "== 3/4 merging the profile" >&2
"$profdata" merge -o "$out/switchyard.profdata" "$out/raw"

echo "== 4/4 build with the profile" >&2
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$out/switchyard.profdata" \
    cargo build --release --locked --bin switchyard --target-dir "$out/use" >&2
cp "$out/use/release/switchyard" "$out/switchyard"
echo "$out/switchyard"
