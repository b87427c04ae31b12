#!/usr/bin/env bash
# The README's "Try it" section, run as a newcomer runs it: `serve --dev` on 127.0.0.1:8080,
# then every `sh` block of that section as written (the token line aside: the token is the one
# the server printed; `cargo run --release --` is the debug binary, to spare CI a release
# build). What each block must answer is checked below. The server is left running, as a
# newcomer leaves it; its pid goes to target/walkthrough.pid. `.ci/run` runs this before the
# suite, so the suite is proven not to depend on the dev store or on port 8080 (issue 44).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v curl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq curl >/dev/null
  else
    echo "walkthrough: curl is required (apt-get install curl)" >&2; exit 2
  fi
fi
cargo build -q --bin keybroker
bin="$PWD/target/debug/keybroker"
log="$PWD/target/walkthrough.log"
"$bin" serve --dev >"$log" 2>&1 &
pid=$!
echo "$pid" >target/walkthrough.pid
token=
deadline=$((SECONDS + 60))
while :; do
  token=$(sed -n 's/^dev bearer token (new on every start): \([^ ]*\)$/\1/p' "$log" | head -n 1)
  if [ -n "$token" ] && curl -sf http://127.0.0.1:8080/healthz >/dev/null 2>&1; then
    break
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "walkthrough: serve --dev exited:" >&2; cat "$log" >&2; exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "walkthrough: serve --dev did not answer within 60 s:" >&2; cat "$log" >&2; exit 1
  fi
  sleep 0.2
done

# The section's `sh` blocks, in order, as written.
blocks=$(awk '/^## Try it/ { on = 1; next } /^## / { on = 0 } on' README.md |
  awk '/^```sh$/ { b = 1; next } /^```$/ { b = 0; next } b' |
  grep -v '^TOKEN=' |
  sed "s#cargo run --release -- #$bin #")
out=$(TOKEN="$token" bash -eu -c "$blocks" 2>&1) || {
  echo "walkthrough: a README command failed:" >&2; echo "$out" >&2; exit 1
}
# What the README says each block answers. A second run finds its credentials made already
# (409 `exists`): the store outlives the server, as the README says.
expect() {
  grep -qE -- "$1" <<<"$out" || {
    echo "walkthrough: no answer matching /$1/ in:" >&2; echo "$out" >&2; exit 1
  }
}
expect '"db": ?"dev-only-Zq8#w2!v"'
expect 'BEGIN CERTIFICATE'
expect '"code":"denied"'
expect '"name":"billing-token"|"code":"exists"'
expect '"value":"s3cr3t-v1"'
expect '"name":"tines token"|"code":"exists"'
expect 'keybroker.toml: OK'
echo "walkthrough: the README's commands answered as it says (serve --dev stays up, pid $pid)"
