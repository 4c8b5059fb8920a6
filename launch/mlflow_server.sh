#!/usr/bin/env bash
# Start an MLflow tracking server (UI + REST + model registry + artifact proxy) for a team.
#
#   launch/mlflow_server.sh                                  # sqlite + ./mlflow_data, 127.0.0.1:5000
#   launch/mlflow_server.sh --store /shared/mlflow/mlflow.db --artifacts /shared/mlflow/artifacts
#   launch/mlflow_server.sh --store postgresql://user:pass@dbhost:5432/mlflow --artifacts s3://bucket/mlflow
#   launch/mlflow_server.sh --host 0.0.0.0 --port 5000 -- --allowed-hosts "gpu-head:5000,10.0.0.5:5000"
#
# Options:
#   --store PATH|URI   backend store: a sqlite file path, or a database URI (postgresql://...,
#                      mysql://...). Default: ./mlflow_data/mlflow.db
#   --artifacts DIR|URI  where artifacts (models, PNGs, predictions) live; the server proxies
#                      them, so trainers need no direct access. Default: ./mlflow_data/artifacts
#   --host ADDR        default 127.0.0.1 (this machine only). Anything else exposes the server,
#                      which has NO authentication, to the network: only on a trusted network.
#                      MLflow also checks Host headers: pass --allowed-hosts after `--`.
#   --port N           default 5000
#   --workers N        request workers, default 2
#   -- ARGS...         passed to `mlflow server` unchanged
#
# Trainers on other nodes point at it with MLFLOW_TRACKING_URI=http://<server host>:<port>
# (or tracking.uri in the config); a login node's 127.0.0.1 server is reachable through an SSH
# tunnel: ssh -N -L 5000:127.0.0.1:5000 login-node. Runs then appear under the experiment named
# by tracking.experiment; registered models under Models.
# Stop it with Ctrl-C (or kill the process group: the server runs worker processes).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

store="mlflow_data/mlflow.db"
artifacts="mlflow_data/artifacts"
host="127.0.0.1"
port="5000"
workers="2"
extra=()
while (( $# )); do
    case "$1" in
        --store) store="$2"; shift 2 ;;
        --artifacts) artifacts="$2"; shift 2 ;;
        --host) host="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --workers) workers="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,26p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "mlflow_server.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ "$store" == *"://"* ]]; then
    store_uri="$store"
else  # a sqlite file: absolute path, directory created
    mkdir -p "$(dirname "$store")"
    store_uri="sqlite:///$(cd "$(dirname "$store")" && pwd)/$(basename "$store")"
fi
if [[ "$artifacts" != *"://"* ]]; then
    mkdir -p "$artifacts"
    artifacts="$(cd "$artifacts" && pwd)"
fi
if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
    echo "mlflow_server.sh: --port must be 1-65535, got $port" >&2
    exit 2
fi
if [[ "$host" != "127.0.0.1" && "$host" != "localhost" && "$host" != "::1" ]]; then
    echo "mlflow_server.sh: WARNING: binding to $host exposes the tracking server (no authentication)" \
         "to every machine that can reach this one; use only on a trusted network" >&2
fi
echo "mlflow_server.sh: trainers use MLFLOW_TRACKING_URI=http://$( [[ "$host" == 0.0.0.0 ]] && hostname -f || echo "$host" ):$port"
pf_exec "$PYTHON" -m mlflow server --backend-store-uri "$store_uri" --artifacts-destination "$artifacts" \
    --host "$host" --port "$port" --workers "$workers" ${extra[@]+"${extra[@]}"}
