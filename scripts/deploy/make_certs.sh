#!/usr/bin/env bash
# Create a private CA and a SuperLink TLS certificate signed by it.
#
# Usage: scripts/deploy/make_certs.sh OUT_DIR
#
# Writes into OUT_DIR (created if missing; existing files are NOT overwritten unless FORCE=1):
#   ca.key      CA private key            (keep offline; only needed to sign new certificates)
#   ca.crt      CA certificate            (give to every SuperNode and to the `flwr` CLI user)
#   server.key  SuperLink private key     (stays on the SuperLink host)
#   server.pem  SuperLink certificate     (SAN: localhost, 127.0.0.1, ::1 and $SERVER_SANS)
#
# Environment:
#   SERVER_SANS  extra subjectAltName entries for the SuperLink's public name(s), comma separated,
#                e.g. SERVER_SANS="DNS:superlink.example.org,IP:10.0.0.5"
#   CA_DAYS / SERVER_DAYS  validity (default 365 / 365)
#   FORCE=1      overwrite an existing set
#
# Nothing secret is printed; the keys are created with mode 600.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUT_DIR" >&2
    exit 2
fi
out=$1
mkdir -p "$out"
if [[ -e "$out/ca.crt" && "${FORCE:-0}" != 1 ]]; then
    echo "error: $out/ca.crt exists; set FORCE=1 to overwrite" >&2
    exit 1
fi
umask 077

sans="DNS:localhost,IP:127.0.0.1,IP:::1"
if [[ -n "${SERVER_SANS:-}" ]]; then
    sans="$sans,$SERVER_SANS"
fi
ext=$(mktemp)
trap 'rm -f "$ext" "$out/server.csr" "$out/ca.srl"' EXIT
cat >"$ext" <<CONF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $sans
CONF

# CA
openssl req -x509 -newkey rsa:4096 -sha256 -nodes -days "${CA_DAYS:-365}" \
    -keyout "$out/ca.key" -out "$out/ca.crt" -subj "/CN=fedrec deployment CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# SuperLink server certificate
openssl req -newkey rsa:4096 -sha256 -nodes \
    -keyout "$out/server.key" -out "$out/server.csr" -subj "/CN=localhost" 2>/dev/null
openssl x509 -req -sha256 -days "${SERVER_DAYS:-365}" -in "$out/server.csr" \
    -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -extfile "$ext" -out "$out/server.pem" 2>/dev/null

chmod 600 "$out/ca.key" "$out/server.key"
chmod 644 "$out/ca.crt" "$out/server.pem"
openssl verify -CAfile "$out/ca.crt" "$out/server.pem" >/dev/null
echo "wrote $out/{ca.key,ca.crt,server.key,server.pem} (server SAN: $sans)"
