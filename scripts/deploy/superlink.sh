#!/usr/bin/env bash
# Start the fedrec SuperLink with TLS and SuperNode authentication (Flower 1.42).
#
# Usage: scripts/deploy/superlink.sh CERT_DIR [PORT]
#
#   CERT_DIR  folder made by make_certs.sh: ca.crt, server.pem, server.key
#   PORT      the single HTTPS port of the SuperLink (default $SUPERLINK_PORT or 9093).
#             In Flower 1.42 the Fleet API (SuperNodes), the Control API (`flwr run`,
#             `flwr supernode register`, `flwr ls`) and the Runtime API (ServerApp) all share it.
#
# Environment:
#   SUPERLINK_HOST  interface to bind (default 127.0.0.1; use 0.0.0.0 or the host's address
#                   so that remote sites can connect, and firewall the port: see docs/deploy.md)
#   SUPERLINK_PORT  default for PORT
#   SUPERLINK_DB    SQLite state file (default $FLWR_HOME/superlink-state.db). A file keeps
#                   registered SuperNode keys and runs across restarts; ":flwr-in-memory:"
#                   keeps nothing.
#   SUPERLINK_LOG   optional log file (rotated by Flower); logs also go to stderr
#   FLWR_HOME       Flower's home for this SuperLink (installed apps; default ~/.flwr)
#   FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION  default 1: run the app in this (already
#                   installed) environment instead of re-installing it with `uv` for every run
#
# The process is exec'ed: its pid is this script's pid. Stop it with SIGTERM (Ctrl-C).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 CERT_DIR [PORT]" >&2
    exit 2
fi
cert_dir=$1
port=${2:-${SUPERLINK_PORT:-9093}}
host=${SUPERLINK_HOST:-127.0.0.1}
for f in ca.crt server.pem server.key; do
    if [[ ! -r "$cert_dir/$f" ]]; then
        echo "error: $cert_dir/$f missing (run scripts/deploy/make_certs.sh $cert_dir)" >&2
        exit 1
    fi
done

repo=$(cd "$(dirname "$0")/../.." && pwd)
if ! command -v flower-superlink >/dev/null 2>&1 && [[ -x "$repo/.venv/bin/flower-superlink" ]]; then
    export PATH="$repo/.venv/bin:$PATH"
fi

export FLWR_HOME=${FLWR_HOME:-$HOME/.flwr}
mkdir -p "$FLWR_HOME"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=${FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION:-1}
db=${SUPERLINK_DB:-$FLWR_HOME/superlink-state.db}

args=(
    --ssl-ca-certfile "$cert_dir/ca.crt"
    --ssl-certfile "$cert_dir/server.pem"
    --ssl-keyfile "$cert_dir/server.key"
    --enable-supernode-auth
    --host "$host"
    --port "$port"
    --database "$db"
    --isolation subprocess
)
if [[ "$FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION" == 1 ]]; then
    args+=(--disable-runtime-dependency-installation)
fi
if [[ -n "${SUPERLINK_LOG:-}" ]]; then
    args+=(--log-file "$SUPERLINK_LOG")
fi
echo "superlink: https://$host:$port (TLS, SuperNode auth on), state $db, FLWR_HOME $FLWR_HOME" >&2
exec flower-superlink "${args[@]}"
