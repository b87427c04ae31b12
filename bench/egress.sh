#!/bin/sh
# Egress throughput (issue 19): small answers from a keep-alive nginx upstream that requires a
# client certificate, (a) straight from the load generator with the certificate, and (b) through
# keybroker's egress proxy, which presents the same certificate from a credential. Same generator
# (bench/loadgen.rs), same connections, one row each.
#
#   DURATION=5 CONCURRENCY=32 bench/egress.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-"1 32"}
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { echo "bench/egress.sh needs nginx" >&2; exit 2; }
PATH="$PATH:/usr/sbin"
cargo build --release --quiet ${CARGO_FLAGS:-} --bin keybroker --example loadgen
bin=$root/target/release
before_cleanup() { nginx -p "$work/nginx" -c nginx.conf -s stop 2>/dev/null || true; }
. "$root/bench/lib.sh"
scratch

sh examples/tls/gen-certs.sh "$work/pki" >/dev/null
up=$(port); kb=$(port); eg=$(port)
mkdir -p "$work/nginx/logs" "$work/secrets/partner" "$work/policies"
cat >"$work/nginx/nginx.conf" <<NGINX
user root;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx/body; proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi; uwsgi_temp_path $work/nginx/uwsgi; scgi_temp_path $work/nginx/scgi;
  server {
    listen 127.0.0.1:$up ssl;
    ssl_certificate $work/pki/server.pem; ssl_certificate_key $work/pki/server-key.pem;
    ssl_client_certificate $work/pki/ca.pem; ssl_verify_client on;
    location / { return 200 "ok \$ssl_client_s_dn\n"; }
  }
}
NGINX
nginx -p "$work/nginx" -c nginx.conf
python3 - "$work" <<'PY'
import json, sys
w = sys.argv[1]
read = lambda n: open(f"{w}/pki/{n}").read()
json.dump({"cert": read("gateway.pem"), "key": read("gateway-key.pem"), "ca": read("ca.pem")},
          open(f"{w}/secrets/partner/api.json", "w"))
PY
token=bench-egress-token
bench_policy "$work/policies/p.toml" workflow "$token"
cat >>"$work/policies/p.toml" <<TOML
[[credential]]
name = "partner-api"
mode = "mtls"
team = "bench"
allowed_hosts = ["localhost"]
client_certificate = "\$SECRET_files:partner/api \$KEY_cert"
client_private_key = "\$SECRET_files:partner/api \$KEY_key"
root_certificate = "\$SECRET_files:partner/api \$KEY_ca"
TOML
cat >"$work/kb.toml" <<TOML
policies = "policies"
[server]
listen = "127.0.0.1:$kb"
[egress]
listen = "127.0.0.1:$eg"
resolve = { "localhost" = "127.0.0.1" }
[[source]]
name = "files"
kind = "file"
path = "secrets"
[audit]
path = "audit.log"
fsync = "never"
TOML
(cd "$work" && RUST_LOG=warn exec "$bin/keybroker" serve --config kb.toml) >"$work/kb.log" 2>&1 &
pids="$pids $!"
wait_http "http://127.0.0.1:$kb/healthz"
for c in $CONCURRENCY; do
  "$bin/examples/loadgen" --label "direct (loadgen → nginx, mTLS)" -c "$c" -d "$DURATION" \
    --url "https://localhost:$up/" --cacert "$work/pki/ca.pem" --cert "$work/pki/gateway.pem" --key "$work/pki/gateway-key.pem"
  "$bin/examples/loadgen" --label "egress (loadgen → keybroker → nginx)" -c "$c" -d "$DURATION" \
    --url "http://127.0.0.1:$eg/" --proxy-uri "http://localhost:$up/" \
    --header "Proxy-Authorization: Bearer $token" --header "Keybroker-Credential: partner-api"
done
