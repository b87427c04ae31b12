#!/bin/sh
# Server CPU per `/v1/resolve` cache hit for large documents (issue 29): a document of 100
# cached references, and ≈ 1 MiB of JSON (the request limit) holding 10 references. The file
# source, `fsync = "never"` (the rows are about expansion, not the disk), 8 connections.
# KEYBROKERS lists binaries to compare (default: this tree's release build), e.g. one built
# from the commit before faithful expansion:
#
#   bench/documents.sh
#   KEYBROKERS="/tmp/before/release/keybroker target/release/keybroker" ROUNDS=3 bench/documents.sh
#   PERF=hundred ROUNDS=1 bench/documents.sh     # perf profile of one document's row (or mib)
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-8}
ROUNDS=${ROUNDS:-3}
cargo build --release --quiet --bin keybroker --example loadgen
bin=$root/target/release
KEYBROKERS=${KEYBROKERS:-$bin/keybroker}
. "$root/bench/lib.sh"
scratch

mkdir -p "$work/secrets/bench" "$work/policies"
for i in $(seq 0 99); do
  printf 'bench-secret-value-%06d-0123456789abcdef' "$i" >"$work/secrets/bench/s-$i"
done
token=bench-token
bench_policy "$work/policies/bench.toml" bench-gateway "$token"
bench_grant "$work/policies/bench.toml" files
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
ref = lambda i: "$SECRET_bench/s-%d $KEY_value" % i
hundred = {"document": {"items": [{"id": i, "secret": ref(i)} for i in range(100)]}, "host": "a.bench.example"}
# ≈ 1 MiB: records with big-number amounts and plain strings, 10 of them holding a reference.
records = []
for i in range(10400):
    r = {"id": 12345678901234567890 + i, "amount": "1.10", "note": "plain text that passes through untouched"}
    if i % 1040 == 0:
        r["secret"] = ref(i // 1040)
    records.append(r)
mib = {"document": {"records": records}, "host": "a.bench.example"}
for name, body in (("hundred", hundred), ("mib", mib)):
    text = json.dumps(body)
    assert len(text) < (1 << 20), len(text)
    open("%s/%s.json" % (work, name), "w").write(text)
    print("%s: %d bytes" % (name, len(text)))
PY

hz=$(getconf CLK_TCK)
n=0
for kb in $KEYBROKERS; do
  n=$((n + 1))
  p=$(port)
  {
    echo 'policies = "policies"'; echo 'default_source = "files"'
    echo '[server]'; echo "listen = \"127.0.0.1:$p\""
    echo '[[source]]'; echo 'name = "files"'; echo 'kind = "file"'; echo 'path = "secrets"'
    echo '[cache]'; echo 'ttl = "1h"'
    echo '[audit]'; echo "path = \"audit-$n.log\""; echo 'fsync = "never"'
  } >"$work/keybroker-$n.toml"
  (cd "$work" && RUST_LOG=warn exec "$kb" serve --config "keybroker-$n.toml") >"$work/kb-$n.log" 2>&1 &
  pid=$!; pids="$pids $pid"
  wait_http "http://127.0.0.1:$p/readyz"
  eval "kb_$n=\"$pid $p\""
done
for round in $(seq "$ROUNDS"); do
  for doc in hundred mib; do
    i=0
    for kb in $KEYBROKERS; do
      i=$((i + 1))
      eval "set -- \$kb_$i"
      if [ "${PERF:-}" = "$doc" ] && [ "$round" = "$ROUNDS" ]; then
        perf record -q -F 999 --call-graph dwarf,16384 -o "$work/perf-$doc.data" -p "$1" >/dev/null 2>&1 &
        perf_pid=$!
      fi
      before=$(ticks "$1")
      out=$("$bin/examples/loadgen" --label "$doc" -c "$CONNECTIONS" -d "$DURATION" --warmup 0 \
        --url "http://127.0.0.1:$2/v1/resolve" --header "Authorization: Bearer $token" --body-file "$work/$doc.json")
      after=$(ticks "$1")
      python3 -c 'import json,sys; r=json.loads(sys.argv[1]); c=(int(sys.argv[3])-int(sys.argv[2]))*1e6/int(sys.argv[4])/max(r["sent"],1); print("round %s %-8s %-50s %7d req/s  %8.1f µs CPU/request  errors %s" % (sys.argv[5], r["label"], sys.argv[6], r["rps"], c, r.get("errors", 0)))' \
        "$out" "$before" "$after" "$hz" "$round" "$kb"
      if [ "${PERF:-}" = "$doc" ] && [ "$round" = "$ROUNDS" ]; then
        kill -INT "$perf_pid"; wait "$perf_pid" || true
        perf report -i "$work/perf-$doc.data" --no-children --percent-limit 1 --stdio -g none 2>/dev/null \
          | grep -v '^#' | grep -v '^$' | head -40
        [ -z "${PERF_KEEP:-}" ] || cp "$work/perf-$doc.data" "$PERF_KEEP"
      fi
    done
  done
done
