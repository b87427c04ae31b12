# Least-privilege Vault/OpenBao policy for keybroker: read the data and metadata of the KV
# mounts it serves, look itself up and renew itself. Nothing else: no list, no write.
path "secret/data/*" {
  capabilities = ["read"]
}
path "secret/metadata/*" {
  capabilities = ["read"]
}
# KV v1 mounts have no data/ prefix.
path "kv1/*" {
  capabilities = ["read"]
}
# Mount auto-detection (kv_version = "auto").
path "sys/internal/ui/mounts/*" {
  capabilities = ["read"]
}
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
