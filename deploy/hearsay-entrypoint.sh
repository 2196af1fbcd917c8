#!/bin/sh
# Container entrypoint: `hearsay run "$@"`, after filling in what only the running
# container can know. Why a script: a compose replica or a StatefulSet pod is started
# from one shared definition, yet each peer needs its own id, its own reachable
# address and its own data shard. Everything else passes through untouched: flags
# still override the environment, exactly as with a bare `hearsay run`.
#
# It only sets variables that are unset or empty, or that hold one of the symbolic
# values below, so an operator's explicit choice always wins:
#
#   HEARSAY_PEER_ID      unset -> $(hostname): the container id under compose, the pod
#                        name (peer-0, peer-1, ...) under a StatefulSet.
#   HEARSAY_ADVERTISE    unset -> <first IPv4 of `hostname -i`>:<gossip port>: the
#                        address Docker / Kubernetes map this container's hostname to
#                        in /etc/hosts, i.e. the one other containers reach it at.
#   HEARSAY_ADMIN_HOST   unset -> 0.0.0.0 when an admin token is configured
#                        (HEARSAY_ADMIN_TOKEN or HEARSAY_ADMIN_TOKEN_FILE), else left
#                        to the default, loopback: the admin API never leaves the
#                        container without a token.
#   HEARSAY_SHARD_INDEX  hash    -> cksum(hostname) mod HEARSAY_SHARD_COUNT (compose:
#                                   replicas cannot learn their index; see README)
#                        ordinal -> the trailing number of the hostname (StatefulSet
#                                   pod peer-3 -> 3)
#   HEARSAY_SEED         hash | ordinal, as above but without the modulo: a distinct
#                        model initialisation and batch order per replica.
#
# The gossip port is read from --port/--port=N in "$@", else HEARSAY_PORT, else 7070.
set -eu

fail() {
    echo "hearsay-entrypoint: $*" >&2
    exit 2
}

host_name=$(hostname)

# cksum (POSIX CRC-32) of the hostname: stable across restarts of the same container
# and the same on every machine, unlike a shell's or Python's salted hash.
name_hash() {
    printf '%s' "$host_name" | cksum | cut -d ' ' -f 1
}

# The trailing decimal number of the hostname (StatefulSet pods are <name>-<ordinal>).
name_ordinal() {
    ordinal=${host_name##*-}
    case $ordinal in
        '' | *[!0-9]*) fail "hostname '$host_name' does not end in -<number>; cannot use 'ordinal'" ;;
    esac
    echo "$ordinal"
}

gossip_port=${HEARSAY_PORT:-7070}
expect_port=0
for arg in "$@"; do
    if [ "$expect_port" = 1 ]; then
        gossip_port=$arg
        expect_port=0
        continue
    fi
    case $arg in
        --port) expect_port=1 ;;
        --port=*) gossip_port=${arg#--port=} ;;
    esac
done

if [ -z "${HEARSAY_PEER_ID:-}" ]; then
    HEARSAY_PEER_ID=$host_name
    export HEARSAY_PEER_ID
fi

if [ -z "${HEARSAY_ADVERTISE:-}" ]; then
    address=''
    for candidate in $(hostname -i 2>/dev/null || true); do
        case $candidate in
            *:*) ;;  # IPv6: keep looking for an IPv4 address
            127.*) ;;  # a hosts file that maps the hostname to loopback is of no use to others
            *) address=$candidate; break ;;
        esac
    done
    [ -n "$address" ] || fail "cannot find this container's address (hostname -i); set HEARSAY_ADVERTISE"
    HEARSAY_ADVERTISE="$address:$gossip_port"
    export HEARSAY_ADVERTISE
fi

if [ -z "${HEARSAY_ADMIN_HOST:-}" ] && { [ -n "${HEARSAY_ADMIN_TOKEN:-}" ] || [ -n "${HEARSAY_ADMIN_TOKEN_FILE:-}" ]; }; then
    HEARSAY_ADMIN_HOST=0.0.0.0
    export HEARSAY_ADMIN_HOST
fi

case ${HEARSAY_SHARD_INDEX:-} in
    hash)
        count=${HEARSAY_SHARD_COUNT:-}
        case $count in
            '' | *[!0-9]* | 0) fail "HEARSAY_SHARD_INDEX=hash needs HEARSAY_SHARD_COUNT >= 1 (got '$count')" ;;
        esac
        HEARSAY_SHARD_INDEX=$(( $(name_hash) % count ))
        export HEARSAY_SHARD_INDEX
        ;;
    ordinal)
        HEARSAY_SHARD_INDEX=$(name_ordinal)
        export HEARSAY_SHARD_INDEX
        ;;
esac

case ${HEARSAY_SEED:-} in
    hash) HEARSAY_SEED=$(name_hash); export HEARSAY_SEED ;;
    ordinal) HEARSAY_SEED=$(name_ordinal); export HEARSAY_SEED ;;
esac

exec hearsay run "$@"
