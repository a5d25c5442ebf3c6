#!/usr/bin/env bash
# Create one SuperNode authentication key pair per site name.
#
# Usage: scripts/deploy/make_node_keys.sh OUT_DIR NAME [NAME...]
#
# Flower 1.42 expects an elliptic-curve key on a NIST curve in OpenSSH format:
#   OUT_DIR/NAME      private key  -> `flower-supernode --auth-supernode-private-key OUT_DIR/NAME`
#                                     (stays on that site's host; mode 600)
#   OUT_DIR/NAME.pub  public key   -> `flwr supernode register OUT_DIR/NAME.pub <connection>`
#                                     (given to the SuperLink operator)
# Existing keys are never overwritten. Nothing secret is printed.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 OUT_DIR NAME [NAME...]" >&2
    exit 2
fi
out=$1
shift
mkdir -p "$out"
umask 077
for name in "$@"; do
    if [[ ! "$name" =~ ^[A-Za-z0-9._-]+$ ]]; then
        echo "error: invalid key name '$name' (use letters, digits, . _ -)" >&2
        exit 2
    fi
    if [[ -e "$out/$name" ]]; then
        echo "error: $out/$name exists; refusing to overwrite" >&2
        exit 1
    fi
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedrec-supernode-$name" -f "$out/$name"
    chmod 600 "$out/$name"
    chmod 644 "$out/$name.pub"
    echo "wrote $out/$name (private) and $out/$name.pub (public)"
done
