#!/bin/sh
# Seeds an OpenBao/Vault dev server with keybroker's example secrets, its policy and an AppRole.
# The same script runs in docker-compose.vault.yml and in the integration tests.
# Needs: BAO_ADDR (or VAULT_ADDR) and BAO_TOKEN (or VAULT_TOKEN) with root rights.
# Optional: KB_APPROLE_DIR — where to write role_id and secret_id for keybroker.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
export BAO_ADDR="${BAO_ADDR:-${VAULT_ADDR:?BAO_ADDR or VAULT_ADDR}}"
export BAO_TOKEN="${BAO_TOKEN:-${VAULT_TOKEN:?BAO_TOKEN or VAULT_TOKEN}}"
cli=$(command -v bao || command -v vault)

# KV v2 at secret/ comes with dev mode; add a KV v1 mount.
"$cli" secrets list -format=json | grep -q '"kv1/"' || "$cli" secrets enable -path=kv1 -version=1 kv >/dev/null

partner="$here/examples/dev/secrets/demo/partner.json"
"$cli" kv put -mount=secret demo/db username=app 'password=dev-only-Zq8#w2!v' host=db.internal.example >/dev/null
"$cli" kv put -mount=secret payments/partner "@$partner" >/dev/null
"$cli" kv put -mount=kv1 legacy/app token=v1-token-7f2 >/dev/null

"$cli" policy write keybroker "$here/policies/vault/keybroker.hcl" >/dev/null
"$cli" auth list -format=json | grep -q '"approle/"' || "$cli" auth enable approle >/dev/null
"$cli" write auth/approle/role/keybroker token_policies=keybroker token_ttl=1h token_max_ttl=4h >/dev/null
if [ -n "${KB_APPROLE_DIR:-}" ]; then
  mkdir -p "$KB_APPROLE_DIR"
  "$cli" read -field=role_id auth/approle/role/keybroker/role-id > "$KB_APPROLE_DIR/role_id"
  "$cli" write -f -field=secret_id auth/approle/role/keybroker/secret-id > "$KB_APPROLE_DIR/secret_id"
fi
echo "seeded $BAO_ADDR"
