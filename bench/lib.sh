# Shared by bench/run.sh, bench/profile.sh and bench/egress.sh (sourced, not run).

# A scratch folder `$work` and a list `$pids` of background processes, both cleaned up when the
# script ends (processes first, then `before_cleanup` if the script defines it, then the folder).
scratch() {
  work=$(mktemp -d)
  pids=""
  trap 'for p in $pids; do kill "$p" 2>/dev/null || true; done; if command -v before_cleanup >/dev/null; then before_cleanup; fi; rm -rf "$work"' EXIT INT TERM
}

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (10 s at most) until `url` answers 2xx: wait_http url [curl options].
wait_http() {
  u=$1; shift
  i=0; until curl -sfo /dev/null "$@" "$u"; do i=$((i+1)); [ $i -lt 200 ] || { echo "no answer from $u" >&2; exit 1; }; sleep 0.05; done
}

# Server CPU time (user + system, clock ticks) of a process, from /proc.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Starts a policy file with team `bench` and one consumer holding a bearer token:
# bench_policy file consumer-name token. Callers append their grants or credentials.
bench_policy() {
  cat >"$1" <<TOML
[[team]]
slug = "bench"
[[consumer]]
name = "$2"
team = "bench"
token_sha256 = "$(printf %s "$3" | sha256sum | cut -d' ' -f1)"
TOML
}

# Appends a grant of `bench/*` in `source` to team `bench`, for hosts `*.bench.example`:
# bench_grant file source.
bench_grant() {
  cat >>"$1" <<TOML
[[grant]]
team = "bench"
source = "$2"
paths = ["bench/*"]
allowed_hosts = ["*.bench.example"]
TOML
}
