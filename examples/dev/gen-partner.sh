#!/usr/bin/env bash
# Generates the demo mTLS bundle examples/dev/secrets/demo/partner.json: a real CA, a leaf
# certificate signed by it, and the leaf's private key (PKCS#8). Dev material only — the
# key is public in this repository. Re-run to rotate; validity is 10 years.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=keybroker demo CA" -keyout ca.key -out ca.pem \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=gateway.payments.example" -keyout leaf.key -out leaf.csr 2>/dev/null
printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName=DNS:gateway.payments.example\n' > ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
  -extfile ext -out leaf.pem 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in leaf.key -out leaf.p8
python3 - "$here/secrets/demo" <<'PY'
import json, sys
doc = {"cert": open("leaf.pem").read(), "key": open("leaf.p8").read(), "ca": open("ca.pem").read()}
with open(sys.argv[1] + "/partner.json", "w") as f:
    json.dump(doc, f, indent=2)
    f.write("\n")
# The same bundle as CyberArk CCP returns it: every newline replaced by a space.
flat = {k: v.replace("\n", " ").strip() for k, v in doc.items()}
with open(sys.argv[1] + "/partner-ccp.json", "w") as f:
    json.dump(flat, f, indent=2)
    f.write("\n")
PY
echo "wrote $here/secrets/demo/partner.json and partner-ccp.json"
