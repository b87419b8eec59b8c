#!/usr/bin/env bash
# netns.sh: hosts for trying vigil across a network on one machine.
#
#   netns.sh up   [PREFIX] [N] [SUBNET]   create N hosts
#   netns.sh down [PREFIX] [N]            remove them
#
# "up" creates a bridge PREFIXbr with address SUBNET.254/24 in the current
# network namespace and N network namespaces PREFIXh1..PREFIXhN, each with
# an eth0 on the bridge at SUBNET.<i>/24 and its own loopback. A process
# runs on host i with `ip netns exec PREFIXh<i> ...`; the current namespace
# reaches every host, and every host reaches SUBNET.254 (where the tests
# forward Redis and PostgreSQL). Defaults: PREFIX vigil, N 3, SUBNET
# 10.77.0. Needs root (CAP_NET_ADMIN) and iproute2.
set -euo pipefail

cmd=${1:?usage: netns.sh up|down [PREFIX] [N] [SUBNET]}
prefix=${2:-vigil}
n=${3:-3}
subnet=${4:-10.77.0}

case $cmd in
up)
	ip link add "${prefix}br" type bridge
	ip addr add "${subnet}.254/24" dev "${prefix}br"
	ip link set "${prefix}br" up
	for i in $(seq 1 "$n"); do
		ns="${prefix}h${i}"
		ip netns add "$ns"
		ip link add "${prefix}h${i}v" type veth peer name eth0 netns "$ns"
		ip link set "${prefix}h${i}v" master "${prefix}br" up
		ip -n "$ns" addr add "${subnet}.${i}/24" dev eth0
		ip -n "$ns" link set eth0 up
		ip -n "$ns" link set lo up
	done
	;;
down)
	for i in $(seq 1 "$n"); do
		ip netns del "${prefix}h${i}" 2>/dev/null || true
		ip link del "${prefix}h${i}v" 2>/dev/null || true
	done
	ip link del "${prefix}br" 2>/dev/null || true
	;;
*)
	echo "netns.sh: unknown command $cmd (up or down)" >&2
	exit 2
	;;
esac
