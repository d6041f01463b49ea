# Shell helpers the bench scripts share (sourced, not run).

# await_router UP_STDOUT UP_LOG UP_PID: waits (up to 60 s) for `tandem up`'s
# ready line in UP_STDOUT ({"event":"ready",...}, printed once every worker
# is ready, so their lines are there too) and prints the router's address;
# exits the script with a message naming UP_LOG if `tandem up` exits or never
# gets ready. (Each worker's own line names the router as well: waiting for
# the first "router" field returned before the last worker was up.)
await_router() {
  local up_out="$1" up_log="$2" up_pid="$3" router=""
  for _ in $(seq 1 600); do
    router=$(grep '"event":"ready"' "$up_out" 2>/dev/null | grep -o '"router":"[^"]*"' | head -1 |
      cut -d'"' -f4 || true)
    [ -n "$router" ] && break
    kill -0 "$up_pid" 2>/dev/null || { echo "tandem up exited; see $up_log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$router" ] || { echo "cluster not ready; see $up_log" >&2; kill "$up_pid"; exit 1; }
  echo "$router"
}
