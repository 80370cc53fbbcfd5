#!/usr/bin/env bash
# Makes a small PKI for the TLS tests in DIR: a CA, a server certificate
# for the name vnamed.test (clients override the name they check), client certificates signed by the CA (one per NAME), and one
# "rogue" client certificate from a CA nobody trusts.
# usage: make-pki.sh DIR NAME...
set -euo pipefail
dir=$1
shift
cd "$dir"
ca() { # ca NAME
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$1" -keyout "$1.key" -out "$1.crt" 2>/dev/null
}
sign() { # sign CA NAME EXT
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$2.key" -out "$2.csr" 2>/dev/null
  printf '%s\n' "$3" > "$2.ext"
  openssl x509 -req -in "$2.csr" -CA "$1.crt" -CAkey "$1.key" -CAcreateserial -days 2 \
    -extfile "$2.ext" -out "$2.crt" 2>/dev/null
  rm -f "$2.csr" "$2.ext"
}
ca ca
ca rogue-ca
sign ca server "subjectAltName=DNS:vnamed.test
extendedKeyUsage=serverAuth"
for name in "$@"; do
  sign ca "$name" "extendedKeyUsage=clientAuth"
done
sign rogue-ca rogue "extendedKeyUsage=clientAuth"
