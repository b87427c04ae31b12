#!/bin/sh
# Cache-hit rows, keybroker beside the bare handler, for profiling (issue 21): no OpenBao,
# the file source, a policy consumer token. One keybroker per audit mode in FSYNC (a list of
# `always` — the default configuration —, `never`, and `off` for no [audit] section), all
# started at once; ROUNDS rounds each run the bare handler and then every keybroker, so slow
# and fast phases of the machine fall on all of them alike. Prints each row (server CPU µs per
# request, req/s) and, per mode, the median over the rounds of CPU and req/s relative to the
# bare handler of the same round. PERF=1 (one mode) also records keybroker under `perf
# record` in the last round and prints the top of the report (built with the `profiling`
# profile: release with line tables, `debug = 1`).
#
#   bench/profile.sh                                   # always and never, 3 rounds of 5 s
#   FSYNC=never ROUNDS=1 PERF=1 DURATION=10 bench/profile.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
FSYNC=${FSYNC:-"always never"}
ROUNDS=${ROUNDS:-3}
if [ "${PERF:-0}" = 1 ] && [ "$(echo $FSYNC | wc -w)" -ne 1 ]; then
  echo "PERF=1 profiles one mode: set FSYNC to one of always, never, off" >&2; exit 2
fi
cargo build --profile profiling --quiet --bin keybroker --example loadgen --example baseline
bin=$root/target/profiling
. "$root/bench/lib.sh"
scratch

mkdir -p "$work/secrets/bench" "$work/policies"
printf %s "bench-secret-value-000000-0123456789abcdef" >"$work/secrets/bench/s-0"
token=bench-token
bench_policy "$work/policies/bench.toml" bench-gateway "$token"
bench_grant "$work/policies/bench.toml" files
body='{"document":{"v":"$SECRET_bench/s-0 $KEY_value"},"host":"a.bench.example"}'

# One keybroker per mode: kb_<mode> holds "pid port".
for mode in $FSYNC; do
  case $mode in always | never | off) ;; *) echo "FSYNC: always, never or off, not $mode" >&2; exit 2 ;; esac
  p=$(port)
  {
    echo 'policies = "policies"'
    echo 'default_source = "files"'
    echo '[server]'; echo "listen = \"127.0.0.1:$p\""
    echo '[[source]]'; echo 'name = "files"'; echo 'kind = "file"'; echo 'path = "secrets"'
    echo '[cache]'; echo 'ttl = "1h"'
    if [ "$mode" != off ]; then
      echo '[audit]'; echo "path = \"audit-$mode.log\""; echo "fsync = \"$mode\""
    fi
  } >"$work/keybroker-$mode.toml"
  (cd "$work" && RUST_LOG=warn exec "$bin/keybroker" serve --config "keybroker-$mode.toml") >"$work/kb-$mode.log" 2>&1 &
  pid=$!; pids="$pids $pid"
  wait_http "http://127.0.0.1:$p/readyz"
  eval "kb_$mode=\"$pid $p\""
  last=$p
done
bytes=$(curl -s -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  --data "$body" "http://127.0.0.1:$last/v1/resolve" | wc -c)
base=$(port)
"$bin/examples/baseline" --listen "127.0.0.1:$base" --bytes "$bytes" >"$work/base.log" 2>&1 &
pid_base=$!; pids="$pids $pid_base"
wait_http "http://127.0.0.1:$base/"

row() { # round label pid url [loadgen args]
  round=$1; label=$2; pid=$3; url=$4; shift 4
  before=$(ticks "$pid")
  out=$("$bin/examples/loadgen" --label "$label" -c "$CONNECTIONS" -d "$DURATION" --url "$url" \
    --body "$body" "$@")
  after=$(ticks "$pid")
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); c=(int(sys.argv[3])-int(sys.argv[2]))*1e6/int(sys.argv[4])/max(r["sent"],1); print("round %s %-16s %8d req/s  %6.1f µs CPU/request  p99 %d µs" % (sys.argv[6], r["label"], r["rps"], c, r["p99_us"])); print(sys.argv[6], r["label"], c, r["rps"], file=open(sys.argv[5],"a"))' \
    "$out" "$before" "$after" "$(getconf CLK_TCK)" "$work/rows" "$round"
}
for round in $(seq "$ROUNDS"); do
  row "$round" baseline "$pid_base" "http://127.0.0.1:$base/v1/resolve"
  for mode in $FSYNC; do
    eval "set -- \$kb_$mode"
    pid=$1; p=$2
    if [ "${PERF:-0}" = 1 ] && [ "$round" = "$ROUNDS" ]; then
      perf record -q -F "${PERF_FREQ:-999}" ${PERF_CALLGRAPH:---call-graph dwarf,16384} -o "$work/perf.data" -p "$pid" >/dev/null 2>&1 &
      perf_pid=$!
    fi
    row "$round" "keybroker-$mode" "$pid" "http://127.0.0.1:$p/v1/resolve" --header "Authorization: Bearer $token"
    if [ "${PERF:-0}" = 1 ] && [ "$round" = "$ROUNDS" ]; then
      kill -INT "$perf_pid"; wait "$perf_pid" || true
    fi
  done
done
python3 - "$work/rows" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    rnd, label, cpu, rps = line.split()
    rows[rnd][label] = (float(cpu), float(rps))
modes = sorted({l for r in rows.values() for l in r if l != "baseline"})
for m in modes:
    cpu = [r[m][0] / r["baseline"][0] for r in rows.values()]
    rps = [r[m][1] / r["baseline"][1] for r in rows.values()]
    print("%s: CPU %.2fx the bare handler, req/s %.2f of it (median of %d rounds; CPU ratios %s)"
          % (m, statistics.median(cpu), statistics.median(rps), len(cpu),
             ", ".join("%.2f" % c for c in cpu)))
PY
if [ "${PERF:-0}" = 1 ]; then
  perf report -i "$work/perf.data" --no-children --percent-limit 0.7 --stdio -g none 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -60
  [ -z "${PERF_KEEP:-}" ] || cp "$work/perf.data" "$PERF_KEEP"
fi
