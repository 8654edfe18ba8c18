#!/usr/bin/env bash
# Start a local Ray development cluster on 127.0.0.1: one head (with the dashboard and
# the Jobs API) and N worker nodes, each its own `ray start --block` process in its own
# session. Their pids go to $MGR_CLUSTER_DIR/pids; cluster/stop-local.sh stops exactly
# those (never `ray stop`, which would stop every Ray on the machine).
#
# usage: cluster/start-local.sh [WORKERS]          (default 2 workers)
# env:   MGR_CLUSTER_DIR  state, logs and Ray temp dir   (default /tmp/mgr-local-cluster)
#        RAY_PORT         the head's GCS port            (default 6390)
#        DASHBOARD_PORT   dashboard / Jobs API port      (default 8265)
#        HEAD_CPUS, WORKER_CPUS  logical CPUs per node   (default 1 and 1)
#        RAY              the ray executable            (default .venv/bin/ray, else ray)
#        RAY_AUTH_MODE    token (default, as Ray 2.60) or disabled
#        NODE_TIMEOUT_S   seconds each worker may take to join (default 120)
#
# Token authentication: the token is Ray's usual one (~/.ray/auth_token, created here
# when missing; RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH are honoured); it is never printed.
# `mgr submit` and `mgr jobs` find it the same way.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
workers="${1:-2}"
case "$workers" in ''|*[!0-9]*) echo "start-local.sh: WORKERS must be a number, got '$workers'" >&2; exit 2;; esac
dir="${MGR_CLUSTER_DIR:-/tmp/mgr-local-cluster}"
ray_port="${RAY_PORT:-6390}"
dash_port="${DASHBOARD_PORT:-8265}"
head_cpus="${HEAD_CPUS:-1}"
worker_cpus="${WORKER_CPUS:-1}"
if [ -z "${RAY:-}" ]; then
  if [ -x "$root/.venv/bin/ray" ]; then RAY="$root/.venv/bin/ray"; else RAY="$(command -v ray || true)"; fi
fi
[ -n "$RAY" ] && [ -x "$RAY" ] || { echo "start-local.sh: no ray executable (make install, or set RAY=...)" >&2; exit 2; }
py="$(dirname "$RAY")/python"; [ -x "$py" ] || py="$(command -v python3)"

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
if [ -f "$dir/pids" ]; then
  while read -r pid name; do
    if alive "$pid"; then
      echo "start-local.sh: a cluster started from $dir is running ($name pid $pid); run cluster/stop-local.sh first" >&2
      exit 2
    fi
  done < "$dir/pids"
fi
mkdir -p "$dir"
: > "$dir/pids"
# Ray's unix sockets live under the temp dir: keep its path short
tmp="$dir/ray"

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

export RAY_USAGE_STATS_ENABLED=0
# keep idle workers for mgr's quarter-CPU tasks (mgr.pipelines.runtime.worker_pool_env)
export RAY_num_workers_soft_limit="${RAY_num_workers_soft_limit:-$(( 4 * $(nproc) + 4 ))}"
# a job's `python` is the one next to this ray (the venv's, with mgr's dependencies)
export PATH="$(dirname "$RAY"):$PATH"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  "$RAY" get-auth-token --generate > /dev/null 2>&1  # creates ~/.ray/auth_token when missing; prints nothing here
fi

# `setsid CMD &` in a script execs CMD in place: $! is the ray process, leader of a new
# session and process group that holds everything it starts.
setsid "$RAY" start --head --block \
  --node-ip-address=127.0.0.1 --port="$ray_port" \
  --dashboard-host=127.0.0.1 --dashboard-port="$dash_port" --include-dashboard=true \
  --ray-client-server-port="$(free_port)" --dashboard-agent-listen-port="$(free_port)" \
  --num-cpus="$head_cpus" --temp-dir="$tmp" --disable-usage-stats \
  > "$dir/head.log" 2>&1 < /dev/null &
echo "$! head" >> "$dir/pids"
head_pid=$!

url="http://127.0.0.1:$dash_port"
ready=""
for _ in $(seq 1 120); do
  alive "$head_pid" || { echo "start-local.sh: the head exited; see $dir/head.log" >&2; tail -5 "$dir/head.log" >&2; exit 1; }
  if "$py" -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('$url/api/gcs_healthz', timeout=3).status != 200)" 2>/dev/null; then
    ready=1; break
  fi
  sleep 1
done
[ -n "$ready" ] || { echo "start-local.sh: the head did not come up; see $dir/head.log" >&2; exit 1; }

count_nodes() { "$RAY" status --address="127.0.0.1:$ray_port" 2>/dev/null | grep -c ' node_' || true; }

# One worker at a time: nodes of one machine share the session dir, and two starting at
# once can race for the same socket names.
for i in $(seq 1 "$workers"); do
  setsid "$RAY" start --block --address="127.0.0.1:$ray_port" \
    --node-ip-address=127.0.0.1 --num-cpus="$worker_cpus" \
    --dashboard-agent-listen-port="$(free_port)" --metrics-export-port="$(free_port)" --disable-usage-stats \
    > "$dir/worker-$i.log" 2>&1 < /dev/null &
  pid=$!
  echo "$pid worker-$i" >> "$dir/pids"
  deadline=$((SECONDS + ${NODE_TIMEOUT_S:-120}))
  until [ "$(count_nodes)" -ge $((i + 1)) ]; do
    if ! alive "$pid" || [ "$SECONDS" -ge "$deadline" ]; then
      echo "start-local.sh: worker-$i did not join; see $dir/worker-$i.log (cluster/stop-local.sh stops the rest)" >&2
      exit 1
    fi
    sleep 1
  done
done

cat <<MSG
local Ray cluster up: 1 head + $workers worker(s) on 127.0.0.1 (auth: $RAY_AUTH_MODE)
  dashboard / Jobs API:  $url
  join from Python:      ray.init(address="127.0.0.1:$ray_port")
  submit a job:          RAY_ADDRESS=$url mgr submit extract INPUT OUTPUT --labels folder --wait --no-pip
  stop it:               ${MGR_CLUSTER_DIR:+MGR_CLUSTER_DIR=$dir }$here/stop-local.sh
MSG
