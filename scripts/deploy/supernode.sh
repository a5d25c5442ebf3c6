#!/usr/bin/env bash
# Start one site's SuperNode with TLS and SuperNode authentication (Flower 1.42).
#
# Usage: scripts/deploy/supernode.sh SITE_NAME DATA_DIR KEY_FILE [PORT]
#
#   SITE_NAME  this site's name (node-config `site-name`; names its ledger and its results row)
#   DATA_DIR   folder with this site's own data (node-config `data-dir`), e.g. ratings.csv and
#              movies.csv for "ml-latest-small"; ignored by the "synthetic" data set
#   KEY_FILE   this site's private key from make_node_keys.sh (its .pub must be registered
#              with `flwr supernode register` before the node can connect)
#   PORT       local port of this SuperNode's Runtime API, used by its ClientApp processes
#              (default $SUPERNODE_PORT or 9094); must differ for every SuperNode on one host
#
# Environment:
#   SUPERLINK     SuperLink address host:port (default 127.0.0.1:9093)
#   CA_CERT       the deployment's ca.crt, to verify the SuperLink (required)
#   DATASET       optional node-config `dataset` ("generic" for your own files,
#                 "ml-latest-small", "ml-100k", "ml-1m", "synthetic"); without it the run
#                 config's data.dataset is used
#   EXTRA_NODE_CONFIG  more node-config pairs, appended as given, e.g. the site's own data
#                 settings: 'text-columns="title,category" min-interactions=5' (README.md,
#                 docs/deploy.md "Your own data at a site")
#   CHECK_DATA    1: load the site's data with this node config (python -m client.check_data)
#                 and stop with its file:line error before starting the SuperNode; 0: don't.
#                 Default: 1 when DATASET is set (and not "synthetic")
#   LEDGER_PATH   this site's privacy ledger file (node-config `ledger-path`). Default
#                 ${XDG_STATE_HOME:-~/.local/state}/fedrec/SITE_NAME/ledger.json. Set it to
#                 the empty string to let the run config's dp.ledger-dir decide (not advised:
#                 the run config is chosen by whoever submits the run).
#   MAX_EPSILON   optional node-config `max-epsilon`: the site declines any round unless the
#                 run uses local DP with dp.epsilon <= this value
#   MAX_RETRIES, MAX_WAIT_TIME  give up reconnecting after that many tries / seconds
#                 (default: retry forever)
#   FLWR_HOME     Flower's home for this SuperNode (default ~/.flwr)
#   FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION  default 1 (use this installed environment)
#
# The process is exec'ed: its pid is this script's pid. Stop it with SIGTERM (Ctrl-C).
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
    echo "usage: $0 SITE_NAME DATA_DIR KEY_FILE [PORT]" >&2
    exit 2
fi
site=$1
data_dir=$2
key=$3
port=${4:-${SUPERNODE_PORT:-9094}}
superlink=${SUPERLINK:-127.0.0.1:9093}
: "${CA_CERT:?set CA_CERT to the ca.crt of the deployment}"
ledger=${LEDGER_PATH-${XDG_STATE_HOME:-$HOME/.local/state}/fedrec/$site/ledger.json}

if [[ ! "$site" =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "error: invalid site name '$site' (use letters, digits, . _ -)" >&2
    exit 2
fi
if [[ ! -r "$key" ]]; then
    echo "error: private key $key not readable" >&2
    exit 1
fi
if [[ ! -r "$CA_CERT" ]]; then
    echo "error: CA certificate $CA_CERT not readable" >&2
    exit 1
fi
# Node-config values are TOML basic strings: no double quotes or backslashes in them.
for v in "$data_dir" "$ledger" "${DATASET:-}"; do
    case $v in
        *[\"\\]*)
            echo "error: node-config value '$v' must not contain a double quote or backslash" >&2
            exit 2
            ;;
    esac
done

repo=$(cd "$(dirname "$0")/../.." && pwd)
if ! command -v flower-supernode >/dev/null 2>&1 && [[ -x "$repo/.venv/bin/flower-supernode" ]]; then
    export PATH="$repo/.venv/bin:$PATH"
fi
export FLWR_HOME=${FLWR_HOME:-$HOME/.flwr}
mkdir -p "$FLWR_HOME"
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=${FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION:-1}

node_config="site-name=\"$site\" data-dir=\"$data_dir\""
if [[ -n "${DATASET:-}" ]]; then
    node_config+=" dataset=\"$DATASET\""
fi
if [[ -n "${MAX_EPSILON:-}" ]]; then
    node_config+=" max-epsilon=$MAX_EPSILON"
fi
if [[ -n "${EXTRA_NODE_CONFIG:-}" ]]; then
    node_config+=" $EXTRA_NODE_CONFIG"
fi
check=${CHECK_DATA:-}
if [[ -z "$check" ]]; then
    check=$([[ -n "${DATASET:-}" && "${DATASET:-}" != synthetic ]] && echo 1 || echo 0)
fi
if [[ "$check" == 1 ]]; then
    python=$(command -v python || command -v python3)
    [[ -x "$repo/.venv/bin/python" ]] && python="$repo/.venv/bin/python"
    (cd "$repo" && "$python" -m client.check_data --node-config "$node_config") || exit 2
fi
if [[ -n "$ledger" ]]; then
    mkdir -p "$(dirname "$ledger")"
    node_config+=" ledger-path=\"$ledger\""
fi

args=(
    --superlink "$superlink"
    --root-certificates "$CA_CERT"
    --auth-supernode-private-key "$key"
    --port "$port"
    --isolation subprocess
    --node-config "$node_config"
)
if [[ -n "${MAX_RETRIES:-}" ]]; then
    args+=(--max-retries "$MAX_RETRIES")
fi
if [[ -n "${MAX_WAIT_TIME:-}" ]]; then
    args+=(--max-wait-time "$MAX_WAIT_TIME")
fi
if [[ "$FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION" != 1 ]]; then
    args+=(--allow-runtime-dependency-installation)
fi
echo "supernode $site: SuperLink $superlink (TLS, key auth), runtime API 127.0.0.1:$port," \
    "node-config: $node_config" >&2
exec flower-supernode "${args[@]}"
