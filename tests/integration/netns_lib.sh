# shellcheck shell=bash
# netns_lib.sh - a multi-host test bed on one machine (sourced by
# netns_cluster.sh): every "host" is a network namespace of its own with one
# veth link "eth0" into a bridge that lives in a namespace of its own as
# well, so nothing of the test bed touches the machine's own network
# namespace and concurrent runs cannot collide (the namespaces carry the
# test's pid; interface names are per namespace).  Host i has 10.77.0.(10+i)/24.
# Every namespace made is removed on exit, after the daemons are killed.
#
# netns_skip_reason prints why this machine cannot build the test bed (not
# root, no `ip netns`, no veth/bridge support) and fails when it can (then
# it also removes what killed runs left behind).
# Needs daemon_lib.sh sourced first (PIDS, cleanup, T).

NS_PREFIX="mpar$$"
NS_BRIDGE="${NS_PREFIX}br"
NS_HOSTS=()
declare -A NS_ADDR # host name -> its address
NS_SUBNET=10.77.0

netns_skip_reason() {
    if [ "$(id -u)" != 0 ]; then
        echo "needs root to create network namespaces (uid $(id -u))"
        return 0
    fi
    if ! command -v ip >/dev/null 2>&1; then
        echo "no ip(8) (iproute2)"
        return 0
    fi
    local probe="${NS_PREFIX}probe" out
    if ! out=$(ip netns add "$probe" 2>&1); then
        echo "ip netns add fails: $out"
        return 0
    fi
    if ! out=$(ip -n "$probe" link add pa type veth peer name pb 2>&1 &&
        ip -n "$probe" link add pbr type bridge 2>&1); then
        ip netns del "$probe" 2>/dev/null
        echo "no veth or bridge links in this kernel: $out"
        return 0
    fi
    ip netns del "$probe"
    netns_reap_stale
    return 1
}

# Namespaces that an earlier run left behind when it was killed without its
# trap (a ctest timeout): those whose test's pid is gone.
netns_reap_stale() {
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^mpar[0-9]+[a-z]' || true); do
        pid=${ns#mpar}
        pid=${pid%%[a-z]*}
        if [ ! -d "/proc/$pid" ]; then ip netns del "$ns" 2>/dev/null || true; fi
    done
}

netns_cleanup() {
    local ns
    for ns in "${NS_HOSTS[@]}" "$NS_BRIDGE"; do
        ip netns del "$ns" 2>/dev/null || true
    done
}

# The daemons go first (daemon_lib's cleanup), then the namespaces.
netns_on_exit() {
    cleanup
    netns_cleanup
}
trap netns_on_exit EXIT

# netns_host NAME INDEX: a namespace ${NS_PREFIX}NAME with lo up and eth0 at
# $NS_SUBNET.(10+INDEX), linked to the bridge as port "p-NAME".
netns_host() {
    local name=$1 idx=$2 ns
    ns=$(ns "$1")
    if [ ${#NS_HOSTS[@]} = 0 ]; then
        ip netns add "$NS_BRIDGE" || fail "ip netns add $NS_BRIDGE"
        ip -n "$NS_BRIDGE" link add br0 type bridge || fail "bridge"
        ip -n "$NS_BRIDGE" link set br0 up
    fi
    ip netns add "$ns" || fail "ip netns add $ns"
    NS_HOSTS+=("$ns")
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name "p-$name" netns "$NS_BRIDGE" ||
        fail "veth for $name"
    ip -n "$NS_BRIDGE" link set "p-$name" master br0
    ip -n "$NS_BRIDGE" link set "p-$name" up
    NS_ADDR[$name]="$NS_SUBNET.$((10 + idx))"
    ip -n "$ns" addr add "${NS_ADDR[$name]}/24" dev eth0
    ip -n "$ns" link set eth0 up
}

netns_addr() { # INDEX
    echo "$NS_SUBNET.$((10 + $1))"
}

ns() { # NAME: the namespace of host NAME
    echo "${NS_PREFIX}$1"
}

# ns_run NAME command...: runs command in host NAME's namespace.
ns_run() {
    local n=$1
    shift
    ip netns exec "$(ns "$n")" "$@"
}

# netns_link NAME up|down: the host's only link.
netns_link() {
    ip -n "$(ns "$1")" link set eth0 "$2"
}

# netns_has_netem: whether tc can put a netem qdisc on a link (sch_netem).
netns_has_netem() {
    command -v tc >/dev/null 2>&1 || return 1
    local ns="${NS_HOSTS[0]}"
    tc -n "$ns" qdisc add dev eth0 root netem delay 1ms >/dev/null 2>&1 || return 1
    tc -n "$ns" qdisc del dev eth0 root
}

# netns_netem NAME ARGS...: netem on what host NAME sends (its eth0's egress);
# given to every host, every packet between two hosts passes it once.
netns_netem() {
    local n=$1
    shift
    tc -n "$(ns "$n")" qdisc replace dev eth0 root netem "$@"
}

# netns_lossy DELAY_MS LOSS HOST...: for kernels without netem, every
# packet between the hosts goes through netns_relay.py instead of the
# bridge: each host gets a TUN device lossy0 and a /32 route through it to
# every other host (more specific than eth0's /24, with eth0's address as
# the source, so eth0 stays up, UCX keeps using it, and established
# connections move over).  netns_lossy_stop ends it and prints the relay's
# counts ("forwarded N lost M discarded K").
netns_lossy() {
    local delay=$1 loss=$2 h o args=()
    shift 2
    for h in "$@"; do args+=("$(ns "$h")=${NS_ADDR[$h]}"); done
    python3 "$SRC/tests/integration/netns_relay.py" --delay-ms "$delay" --loss "$loss" \
        "${args[@]}" >"$T/relay.out" 2>"$T/relay.log" &
    RELAY_PID=$!
    PIDS+=("$RELAY_PID")
    wait_for 10 grep -q ready "$T/relay.out" || fail "the relay: $(cat "$T/relay.log")"
    for h in "$@"; do
        ip -n "$(ns "$h")" link set lossy0 up
        for o in "$@"; do
            [ "$o" = "$h" ] && continue
            ip -n "$(ns "$h")" route add "${NS_ADDR[$o]}/32" dev lossy0 src "${NS_ADDR[$h]}" ||
                fail "route $h -> $o through the relay"
        done
    done
}

netns_lossy_stop() {
    kill -TERM "$RELAY_PID"
    timeout 10 tail --pid="$RELAY_PID" -f /dev/null || fail "the relay did not stop"
    wait "$RELAY_PID" 2>/dev/null || true
    tail -n 1 "$T/relay.out"
}
