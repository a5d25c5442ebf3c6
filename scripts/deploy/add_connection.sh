#!/usr/bin/env bash
# Add (or replace) a SuperLink connection in the Flower CLI configuration, $FLWR_HOME/config.toml.
#
# Usage: scripts/deploy/add_connection.sh NAME ADDRESS CA_CERT
#
#   NAME     connection name used on the command line: `flwr run . NAME`, `flwr ls NAME`,
#            `flwr supernode register KEY.pub NAME`
#   ADDRESS  the SuperLink's host:port (the name/IP must be in the server certificate's SAN)
#   CA_CERT  the deployment's ca.crt (stored as an absolute path, as Flower requires)
#
# Writes:
#   [superlink.NAME]
#   address = "ADDRESS"
#   root-certificates = "/abs/path/ca.crt"
#
# Environment:
#   SET_DEFAULT=1  also set `[superlink] default = "NAME"`, so that a bare `flwr ls` / `flwr log`
#                  talks to this SuperLink. Without it, a config.toml that Flower created itself
#                  keeps `default = "local"`, and a bare `flwr ls` then starts a local simulation
#                  SuperLink in the background (flwr 1.42) and lists ITS (empty) runs.
set -euo pipefail

if [[ $# -ne 3 ]]; then
    echo "usage: $0 NAME ADDRESS CA_CERT" >&2
    exit 2
fi
repo=$(cd "$(dirname "$0")/../.." && pwd)
py=python3
if [[ -x "$repo/.venv/bin/python" ]]; then
    py="$repo/.venv/bin/python"
fi
export FLWR_HOME=${FLWR_HOME:-$HOME/.flwr}
mkdir -p "$FLWR_HOME"
"$py" - "$1" "$2" "$3" "${SET_DEFAULT:-0}" <<'PY'
import os
import re
import sys
from pathlib import Path

import tomli
import tomli_w

name, address, ca, set_default = sys.argv[1:5]
if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
    sys.exit(f"error: invalid connection name {name!r}")
if not re.fullmatch(r"[^\s:/]+:[0-9]{1,5}|\[[0-9a-fA-F:]+\]:[0-9]{1,5}", address):
    sys.exit(f"error: address must be host:port, got {address!r}")
ca_path = Path(ca).expanduser().resolve()
if not ca_path.is_file():
    sys.exit(f"error: {ca_path} is not a file")
path = Path(os.environ["FLWR_HOME"]) / "config.toml"
conf = tomli.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
conf.setdefault("superlink", {})[name] = {
    "address": address,
    "root-certificates": str(ca_path),
}
if set_default == "1":
    conf["superlink"]["default"] = name
path.write_text(tomli_w.dumps(conf), encoding="utf-8")
default = conf["superlink"].get("default")
print(f"connection {name!r} -> {address} (CA {ca_path}) written to {path}; default: {default}")
PY
