#!/usr/bin/env bash
# testnet.sh: a private test network of "hosts" on this machine, for tests and benchmarks that need
# what loopback cannot give: one address per node, a bandwidth cap per link, a link that goes dark
# (a partition: packets vanish, nothing answers, unlike a killed sshd that answers with a reset).
#
# Each host is a Linux network namespace joined by a veth pair to one bridge in the root namespace.
# The root namespace (where the CLI under test runs, "the bastion") has the bridge's address .1.
# Needs root, iproute2 (`ip`, `tc`) and the kernel's tbf qdisc. netem is NOT available here, so
# there is no artificial latency or loss: only rate caps and links up/down.
#
#   testnet.sh up NET_DIR                     create the bridge; prints the subnet (e.g. 198.18.7.0/24)
#   testnet.sh host NET_DIR NAME [RATE]       add host NAME; prints its address; RATE caps both
#                                             directions of its link (tc units: 200mbit, 25mbps)
#   testnet.sh addr NET_DIR NAME              print the address of host NAME
#   testnet.sh exec NET_DIR NAME CMD...       run CMD inside host NAME (ip netns exec; keeps the PID)
#   testnet.sh link NET_DIR NAME up|down      take the host's link down (silent drop) or back up
#   testnet.sh rate NET_DIR NAME RATE|none    change or remove the cap on the host's link
#   testnet.sh bytes NET_DIR NAME             "TX RX": bytes the host has sent and received
#   testnet.sh pids NET_DIR NAME              PIDs of the processes running inside host NAME
#   testnet.sh down NET_DIR                   delete every host namespace, veth and the bridge
#                                             (stop the processes you started in them first)
#
# Addresses come from 198.18.0.0/15 (reserved for network benchmarking, RFC 2544), one /24 per
# NET_DIR, chosen from a hash of NET_DIR (under a machine-wide lock, skipping subnets in use) so that
# harnesses can run side by side. Traffic to them never leaves the machine: the subnet is directly
# connected to the bridge. NET_DIR holds the state: testnet.env (subnet, bridge) and hosts (one line
# per host: name, namespace, host-side veth, namespace-side veth, address).
set -euo pipefail
die() { echo "testnet: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (network namespaces)"
command -v ip >/dev/null && command -v tc >/dev/null || die "needs iproute2 (apt-get install iproute2)"

cmd=${1:-}; dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || { sed -n '2,27p' "$0" >&2; exit 2; }
mkdir -p "$dir"; dir=$(cd "$dir" && pwd -P)
tag=$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
tag=$(printf '%05x' $((tag % 0xfffff)))       # 5 hex digits: interface names stay under 16 bytes
br=icb$tag

state() { [[ -f "$dir/testnet.env" ]] || die "no test network in $dir (run: testnet.sh up $dir)"; . "$dir/testnet.env"; }
host_line() { awk -v n="$1" '$1 == n' "$dir/hosts" 2>/dev/null; }
shape() {  # shape NETNS_OR_- DEV RATE|none: tbf on the egress of DEV
  local ns=$1 dev=$2 rate=$3 run=()
  [[ $ns == - ]] || run=(ip netns exec "$ns")
  "${run[@]}" tc qdisc del dev "$dev" root 2>/dev/null || true
  [[ $rate == none ]] || "${run[@]}" tc qdisc add dev "$dev" root tbf rate "$rate" burst 256kb latency 100ms
}

case $cmd in
up)
  [[ -f "$dir/testnet.env" ]] && { . "$dir/testnet.env"; echo "$SUBNET.0/24"; exit 0; }
  mkdir -p /run/lock; exec 9>/run/lock/imgcache-testnet.lock; flock -w 30 9 || die "another testnet.sh up holds the lock"
  ip link show "$br" >/dev/null 2>&1 && die "bridge $br exists already (a test network left behind for $dir?)"
  third=$(( (0x$tag % 250) + 1 ))
  for ((try = 0; try < 250; try++)); do
    subnet=198.18.$third
    ip route show | grep -q "^$subnet\.0/24" || break
    third=$(( third % 250 + 1 ))
  done
  ip link add "$br" type bridge
  ip addr add "$subnet.1/24" dev "$br"
  ip link set "$br" up
  printf 'SUBNET=%s\nBRIDGE=%s\nTAG=%s\n' "$subnet" "$br" "$tag" > "$dir/testnet.env"
  : > "$dir/hosts"
  echo "$subnet.0/24"
  ;;
host)
  state; name=${3:?host NAME}; rate=${4:-none}
  exec 9>"$dir/.lock"; flock -w 30 9 || die "$dir is locked"
  [[ $name =~ ^[A-Za-z0-9_-]{1,32}$ ]] || die "host name: letters, digits, - and _ only"
  [[ -z $(host_line "$name") ]] || die "host $name exists"
  n=$(( $(wc -l < "$dir/hosts") + 1 )); (( n <= 240 )) || die "at most 240 hosts"
  ns=ic$TAG-$name; hv=ic${TAG}h$n; nv=ic${TAG}n$n; addr=$SUBNET.$((n + 9))
  trap '[[ $? == 0 ]] || { ip link del "$hv" 2>/dev/null; ip netns del "$ns" 2>/dev/null; }' EXIT
  ip netns add "$ns"
  ip link add "$hv" type veth peer name "$nv"
  ip link set "$nv" netns "$ns"
  ip link set "$hv" master "$BRIDGE" up
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" ip addr add "$addr/24" dev "$nv"
  ip netns exec "$ns" ip link set "$nv" up
  shape - "$hv" "$rate"          # bastion -> host
  shape "$ns" "$nv" "$rate"      # host -> bastion
  echo "$name $ns $hv $nv $addr" >> "$dir/hosts"
  echo "$addr"
  ;;
addr)
  state; name=${3:?addr NAME}
  read -r _ _ _ _ addr <<<"$(host_line "$name")"; [[ -n ${addr:-} ]] || die "no host $name"
  echo "$addr"
  ;;
exec)
  state; name=${3:?exec NAME CMD...}; shift 3
  read -r _ ns _ <<<"$(host_line "$name")"; [[ -n ${ns:-} ]] || die "no host $name"
  exec ip netns exec "$ns" "$@"
  ;;
link)
  state; name=${3:?link NAME up|down}; how=${4:?up|down}
  read -r _ ns hv nv _ <<<"$(host_line "$name")"; [[ -n ${ns:-} ]] || die "no host $name"
  [[ $how == up || $how == down ]] || die "link: up or down"
  ip link set "$hv" "$how"
  ;;
rate)
  state; name=${3:?rate NAME RATE}; rate=${4:?RATE|none}
  read -r _ ns hv nv _ <<<"$(host_line "$name")"; [[ -n ${ns:-} ]] || die "no host $name"
  shape - "$hv" "$rate"; shape "$ns" "$nv" "$rate"
  ;;
bytes)
  state; name=${3:?bytes NAME}
  read -r _ ns _ nv _ <<<"$(host_line "$name")"; [[ -n ${ns:-} ]] || die "no host $name"
  echo "$(ip netns exec "$ns" cat "/sys/class/net/$nv/statistics/tx_bytes") $(ip netns exec "$ns" cat "/sys/class/net/$nv/statistics/rx_bytes")"
  ;;
pids)
  state; name=${3:?pids NAME}
  read -r _ ns _ <<<"$(host_line "$name")"; [[ -n ${ns:-} ]] || die "no host $name"
  ip netns pids "$ns" 2>/dev/null || true
  ;;
down)
  [[ -f "$dir/testnet.env" ]] || exit 0
  . "$dir/testnet.env"
  while read -r name ns hv nv addr; do
    left=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [[ -z $left ]] || echo "testnet: host $name still runs pids $left (stop them first; deleting anyway)" >&2
    ip link del "$hv" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done < "$dir/hosts"
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -f "$dir/testnet.env" "$dir/hosts"
  ;;
*) die "unknown command $cmd" ;;
esac
