#!/usr/bin/env bash
# The README's "Try it" section, run as a newcomer runs it: `serve --dev` on 127.0.0.1:8080,
# then every command of that section as written (the token line aside: the token is the one
# the server printed; `cargo run --release --` is the debug binary, to spare CI a release
# build), each printed answer compared with the one the README shows (scripts/walkthrough.py). The server is left running, as a
# newcomer leaves it; its pid goes to target/walkthrough.pid. `.ci/run` runs this before the
# suite, so the suite is proven not to depend on the dev store or on port 8080 (issue 44).
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in curl python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null
    else
      echo "walkthrough: $tool is required (apt-get install $tool)" >&2; exit 2
    fi
  fi
done
cargo build -q --bin keybroker
bin="$PWD/target/debug/keybroker"
log="$PWD/target/walkthrough.log"
# The README shows a first run's answers (a credential created, not `exists`): the dev store
# starts empty. It is dev-mode data under target/, like a `cargo clean`.
rm -rf target/dev-store
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

python3 scripts/walkthrough.py "$bin" "$token"
echo "walkthrough: the README's commands answered as it says (serve --dev stays up, pid $pid)"
