#!/usr/bin/env bash
# Stop the local cluster that cluster/start-local.sh started: exactly the processes whose
# pids it recorded in $MGR_CLUSTER_DIR/pids (workers first, then the head), each with
# SIGTERM (Ray drains and stops that node's processes), then whatever is left in that
# process's own process group. Other Ray instances on the machine are left alone.
set -euo pipefail

dir="${MGR_CLUSTER_DIR:-/tmp/mgr-local-cluster}"
[ -f "$dir/pids" ] || { echo "stop-local.sh: no cluster recorded in $dir (nothing to stop)"; exit 0; }

is_ours() {  # the pid is still a `ray start` process (not a recycled pid)
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -q "ray start"
}

stop_one() {
  local pid="$1" name="$2"
  if is_ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  fi
  # its session/process group (setsid made pid its leader) holds only what it started
  if kill -0 -- "-$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  echo "stopped $name (pid $pid)"
}

# workers first, the head last
tac "$dir/pids" | while read -r pid name; do
  [ -n "$pid" ] && stop_one "$pid" "$name"
done
rm -f "$dir/pids"
