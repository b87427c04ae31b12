#!/bin/sh
# One cache-hit row, keybroker beside the bare handler, for profiling (issue 21): no OpenBao,
# the file source, a policy consumer token, the audit trail as configured by default unless
# FSYNC=never (or FSYNC=off for no [audit] section). Prints server CPU µs per request for both
# and the ratio; with PERF=1 also records keybroker under `perf record` and prints the top of
# the report (the release profile keeps line tables: `debug = 1`).
#
#   bench/profile.sh                         # 5 s, 32 connections, fsync = "always"
#   FSYNC=never PERF=1 DURATION=10 bench/profile.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
FSYNC=${FSYNC:-always}
cargo build --release --quiet --bin keybroker --example loadgen --example baseline
bin=$root/target/release
work=$(mktemp -d)
pids=""
cleanup() { for p in $pids; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT INT TERM
. "$root/bench/lib.sh"

mkdir -p "$work/secrets/bench" "$work/policies"
printf %s "bench-secret-value-000000-0123456789abcdef" >"$work/secrets/bench/s-0"
token=bench-token
bench_policy "$work/policies/bench.toml" bench-gateway "$token"
cat >>"$work/policies/bench.toml" <<TOML
[[grant]]
team = "bench"
source = "files"
paths = ["bench/*"]
allowed_hosts = ["*.bench.example"]
TOML
kb=$(port); base=$(port)
{
  echo 'policies = "policies"'
  echo 'default_source = "files"'
  echo '[server]'; echo "listen = \"127.0.0.1:$kb\""
  echo '[[source]]'; echo 'name = "files"'; echo 'kind = "file"'; echo 'path = "secrets"'
  echo '[cache]'; echo 'ttl = "1h"'
  if [ "$FSYNC" != off ]; then
    echo '[audit]'; echo 'path = "audit.log"'; echo "fsync = \"$FSYNC\""
  fi
} >"$work/keybroker.toml"
(cd "$work" && RUST_LOG=warn exec "$bin/keybroker" serve --config keybroker.toml) >"$work/kb.log" 2>&1 &
pid_kb=$!; pids="$pids $pid_kb"
wait_http "http://127.0.0.1:$kb/readyz"
body='{"document":{"v":"$SECRET_bench/s-0 $KEY_value"},"host":"a.bench.example"}'
bytes=$(curl -s -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  --data "$body" "http://127.0.0.1:$kb/v1/resolve" | wc -c)
"$bin/examples/baseline" --listen "127.0.0.1:$base" --bytes "$bytes" >"$work/base.log" 2>&1 &
pid_base=$!; pids="$pids $pid_base"
wait_http "http://127.0.0.1:$base/"

hz=$(getconf CLK_TCK)
row() { # label pid url [loadgen args]
  label=$1; pid=$2; url=$3; shift 3
  before=$(ticks "$pid")
  out=$("$bin/examples/loadgen" --label "$label" -c "$CONNECTIONS" -d "$DURATION" --url "$url" \
    --body "$body" "$@")
  after=$(ticks "$pid")
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); c=(int(sys.argv[3])-int(sys.argv[2]))*1e6/int(sys.argv[4])/max(r["sent"],1); print("%-10s %8d req/s  %6.1f µs CPU/request  p99 %d µs" % (r["label"], r["rps"], c, r["p99_us"])); print(c, r["rps"], file=open(sys.argv[5],"w"))' \
    "$out" "$before" "$after" "$hz" "$work/$label.cpu"
}
row baseline "$pid_base" "http://127.0.0.1:$base/v1/resolve"
if [ "${PERF:-0}" = 1 ]; then
  perf record -q -F ${PERF_FREQ:-999} ${PERF_CALLGRAPH:---call-graph dwarf,16384} -o "$work/perf.data" -p "$pid_kb" >/dev/null 2>&1 &
  perf_pid=$!
fi
row keybroker "$pid_kb" "http://127.0.0.1:$kb/v1/resolve" --header "Authorization: Bearer $token"
python3 -c 'import sys; k,kr=map(float,open(sys.argv[1]).read().split()); b,br=map(float,open(sys.argv[2]).read().split()); print("fsync = %s: CPU %.2fx the bare handler, req/s %.2f of it" % (sys.argv[3], k/b, kr/br))' \
  "$work/keybroker.cpu" "$work/baseline.cpu" "$FSYNC"
if [ "${PERF:-0}" = 1 ]; then
  kill -INT "$perf_pid"; wait "$perf_pid" || true
  perf report -i "$work/perf.data" --no-children --percent-limit 0.7 --stdio -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -60
  [ -z "${PERF_KEEP:-}" ] || cp "$work/perf.data" "$PERF_KEEP"
fi
