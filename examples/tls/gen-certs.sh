#!/bin/sh
# Makes the throwaway PKI of the TLS example in examples/tls/pki/ (or $1): one CA, a server
# certificate for localhost/127.0.0.1, and a gateway client certificate whose subject matches
# the example policy's issuer ACL. Development material only; re-run to replace it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/pki"}
mkdir -p "$out"
cd "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=keybroker example CA" -keyout ca-key.pem -out ca.pem \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
issue() { # name subject extensions
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "$2" -keyout "$1-key.pem" -out "$1.csr" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
issue server "/CN=localhost" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
issue gateway "/CN=gateway-1.payments.example" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
rm -f ca-key.pem ca.srl
echo "wrote $out: ca.pem server.pem server-key.pem gateway.pem gateway-key.pem"
