#!/usr/bin/env bash
# A multi-host Tandem cluster on one machine: each "host" is a network
# namespace with its own address, joined by veth pairs to a bridge that lives
# in a namespace of its own (the machine's own network is never touched).
#
#   scripts/netns_cluster.sh up   [PREFIX]   namespaces + links + addresses
#   scripts/netns_cluster.sh run  [PREFIX]   up, then router/prefill/decode in
#                                            their namespaces until Ctrl-C, then down
#   scripts/netns_cluster.sh down [PREFIX]   remove everything PREFIX made
#   scripts/netns_cluster.sh link [PREFIX] HOST up|down
#                                            take a host's link down or up
#                                            (bridge side; HOST: router|prefill|decode|decode2)
#   scripts/netns_cluster.sh netem [PREFIX] HOST "delay 50ms loss 5%"|off
#                                            tc netem on both directions of a
#                                            host's link (needs the kernel's sch_netem)
#   scripts/netns_cluster.sh qdisc [PREFIX] HOST "tbf rate 2mbit burst 16kb latency 200ms"|off
#                                            any root qdisc on both directions
#                                            (a throttled link where netem is absent)
#
# PREFIX (default "tandem") names the namespaces PREFIX-router, PREFIX-prefill,
# PREFIX-decode, PREFIX-decode2 and PREFIX-br (the bridge). Addresses, on NET
# (default 10.77.0): router NET.1, prefill NET.2, decode NET.3, decode2 NET.4,
# each /24 (`run` starts no worker on decode2: it is the second decode host
# the fault tests use). `run` uses
# TANDEM (default build/bin/tandem), MODEL (default synthetic:tiny) and
# UCX_TLS (default tcp: keeps KV transfers on the namespaces' addresses; UCX's
# shared-memory transports would otherwise cross namespaces on one kernel).
# Needs root (ip netns). `down` is idempotent and safe to run after a failure.
set -euo pipefail

cmd="${1:-}"
prefix="${2:-tandem}"
net="${NET:-10.77.0}"
hosts=(router prefill decode decode2)

address_of() {
  case "$1" in
    router) echo "$net.1" ;;
    prefill) echo "$net.2" ;;
    decode) echo "$net.3" ;;
    decode2) echo "$net.4" ;;
    *) echo "netns_cluster: unknown host '$1'" >&2; exit 2 ;;
  esac
}

# veth names are at most 15 bytes: a short hash of the prefix keeps
# concurrent prefixes apart.
tag="$(printf '%s' "$prefix" | cksum | cut -c1-6)"
host_index() { address_of "$1" | sed 's/.*\.//'; }  # the last octet: unique per host
host_if() { echo "th${tag}$(host_index "$1")"; }    # inside the host's namespace
bridge_if() { echo "tb${tag}$(host_index "$1")"; }  # the bridge's end

down() {
  for h in "${hosts[@]}"; do
    ip netns pids "$prefix-$h" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$prefix-$h" 2>/dev/null || true
  done
  ip netns del "$prefix-br" 2>/dev/null || true
}

up() {
  down
  ip netns add "$prefix-br"
  ip -n "$prefix-br" link add br0 type bridge
  ip -n "$prefix-br" link set br0 up
  ip -n "$prefix-br" link set lo up
  for h in "${hosts[@]}"; do
    local ns="$prefix-$h"
    ip netns add "$ns"
    ip link add "$(host_if "$h")" netns "$ns" type veth peer name "$(bridge_if "$h")" netns "$prefix-br"
    ip -n "$prefix-br" link set "$(bridge_if "$h")" master br0
    ip -n "$prefix-br" link set "$(bridge_if "$h")" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$(address_of "$h")/24" dev "$(host_if "$h")"
    ip -n "$ns" link set "$(host_if "$h")" up
  done
  # Wait until every host's link is up (veth carrier, bridge forwarding).
  for _ in $(seq 50); do
    local all_up=1
    for h in "${hosts[@]}"; do
      [ "$(ip netns exec "$prefix-$h" cat "/sys/class/net/$(host_if "$h")/operstate" 2>/dev/null)" = up ] || all_up=0
    done
    [ "$all_up" = 1 ] && return 0
    sleep 0.1
  done
  echo "netns_cluster: links of $prefix-* did not come up" >&2
  return 1
}

link() {
  local h="${1:?host}" state="${2:?up|down}"
  address_of "$h" >/dev/null
  ip -n "$prefix-br" link set "$(bridge_if "$h")" "$state"
}

# A qdisc both ways: the bridge's end shapes what reaches the host, the
# host's end what it sends.
qdisc() {
  local h="${1:?host}" spec="${2:?qdisc spec or off}"
  address_of "$h" >/dev/null
  if [ "$spec" = off ]; then
    ip netns exec "$prefix-br" tc qdisc del dev "$(bridge_if "$h")" root 2>/dev/null || true
    ip netns exec "$prefix-$h" tc qdisc del dev "$(host_if "$h")" root 2>/dev/null || true
    return 0
  fi
  # shellcheck disable=SC2086  # the spec is tc's own words
  ip netns exec "$prefix-br" tc qdisc replace dev "$(bridge_if "$h")" root $spec
  # shellcheck disable=SC2086
  ip netns exec "$prefix-$h" tc qdisc replace dev "$(host_if "$h")" root $spec
}

netem() {
  if [ "${2:-}" = off ]; then qdisc "${1:-}" off; else qdisc "${1:-}" "netem ${2:?netem spec or off}"; fi
}

run() {
  local tandem="${TANDEM:-build/bin/tandem}" model="${MODEL:-synthetic:tiny}"
  export UCX_TLS="${UCX_TLS:-tcp}"
  up
  trap down EXIT
  local router_address
  router_address="$(address_of router):50051"
  ip netns exec "$prefix-router" "$tandem" router --host "$(address_of router)" --port 50051 \
    --model "$model" &
  sleep 1
  for h in prefill decode; do
    ip netns exec "$prefix-$h" "$tandem" "$h" --router "$router_address" --host "$(address_of "$h")" \
      --port 50061 --model "$model" &
  done
  echo "netns_cluster: router at $router_address; try:" >&2
  echo "  ip netns exec $prefix-router $tandem generate --remote $router_address" >&2
  wait
}

case "$cmd" in
  up) up ;;
  down) down ;;
  run) run ;;
  link) link "${3:-}" "${4:-}" ;;
  netem) netem "${3:-}" "${4:-}" ;;
  qdisc) qdisc "${3:-}" "${4:-}" ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
