#!/usr/bin/env bash
# Do the mechanisms starve each other? A 3-node cluster on loopback (--default-policy available,
# --fsync everysec unless FSYNC says otherwise) takes DURATION seconds (default 60) of available
# writes from redis-benchmark (CLIENTS clients, SET, INCR and SADD on random keys, -r KEYSPACE),
# passes of PASS requests one after the other, all at n1. Meanwhile every node's INFO is sampled
# every half second: the Raft term and role, and the certified staleness of CRDT state. Consensus
# runs on the same nodes with nothing to do but keep its leader.
#
# It prints each pass's requests per second, p50 and p99, then per node: the Raft term before and
# after, the roles seen, and the certified CRDT staleness during the load (median, p99, largest
# sample, and samples over 1 s), each node's certificate counters (sent, withheld, adopted,
# refused) and its lazy relays (held back, spared, due, waiting at the end). A term change means consensus lost its leader under the load; the target is none,
# and staleness under 1 s throughout. With KEEP=1 the samples file also holds, per sample, the
# staleness each node certifies member by member (which member holds its figure back).
#
#   bench/saturate.sh                          # 60 s
#   DURATION=20 bench/saturate.sh              # shorter
#   CONTINUUM=/tmp/continuum bench/saturate.sh # a saved binary, not a fresh build
#   KEEP=1 bench/saturate.sh                   # keep the nodes' logs and the samples
#   CLUSTER_ARGS="--election-timeout 2000" bench/saturate.sh   # more options for `cluster up`
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
CLIENTS=${CLIENTS:-50}
PASS=${PASS:-50000}
KEYSPACE=${KEYSPACE:-100000}
FSYNC=${FSYNC:-everysec}
if ! [[ "$DURATION" =~ ^[0-9]+$ ]] || (( DURATION < 1 || DURATION > 3600 )); then
    echo "DURATION must be 1 to 3600 seconds" >&2
    exit 2
fi
for tool in redis-benchmark redis-cli; do
    if ! command -v "$tool" > /dev/null; then
        echo "installing redis-tools (apt-get)"
        apt-get install -y redis-tools > /dev/null 2>&1 ||
            { apt-get update > /dev/null && apt-get install -y redis-tools > /dev/null; }
        break
    fi
done
if [[ -z "${CONTINUUM:-}" ]]; then swift build -c release --product continuum 2>&1 | tail -1; fi
continuum=${CONTINUUM:-.build/release/continuum}

work=$(mktemp -d)
sampler=
cleanup() {
    [[ -n "$sampler" ]] && kill "$sampler" 2> /dev/null || true
    $continuum cluster down --data-dir "$work/cluster" > /dev/null 2>&1 || true
    wait 2> /dev/null || true
    if [[ -n "${KEEP:-}" ]]; then echo "kept the nodes' logs and the samples in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

ports=(16801 16802 16803)
# shellcheck disable=SC2086 # CLUSTER_ARGS is words for `cluster up`
$continuum cluster up --nodes 3 --data-dir "$work/cluster" --default-policy available --fsync "$FSYNC" \
    --base-port 16810 --resp-base-port 16800 --metrics-base-port 0 ${CLUSTER_ARGS:-} > "$work/up.log" 2>&1 ||
    { cat "$work/up.log"; exit 1; }

# field NODE NAME: one INFO field of a node (empty when it does not answer within 5 s).
field() {
    { timeout 5 redis-cli -p "${ports[$1]}" INFO 2> /dev/null || true; } | tr -d '\r' | awk -F: -v f="$2" '$1 == f { print $2 }'
}
# Wait (20 s at most) for a leader, so that "before" is a settled term.
for _ in $(seq 40); do
    leaders=0
    for i in 0 1 2; do [[ "$(field $i raft_role)" == "leader" ]] && leaders=$((leaders + 1)); done
    (( leaders == 1 )) && break
    sleep 0.5
done
before=()
for i in 0 1 2; do before+=("$(field $i raft_term)"); done
echo "before the load: raft terms (n1 n2 n3) ${before[*]}"

# The sampler: every half second, per node, "node term role staleness_ms", until stopped (and
# for DURATION + 60 s at most).
: > "$work/samples"
(
    end=$(( $(date +%s) + DURATION + 60 ))
    while (( $(date +%s) < end )); do
        for i in 0 1 2; do
            info=$(timeout 2 redis-cli -p "${ports[$i]}" INFO 2> /dev/null | tr -d '\r') || info=""
            term=$(awk -F: '$1 == "raft_term" { print $2 }' <<< "$info")
            role=$(awk -F: '$1 == "raft_role" { print $2 }' <<< "$info")
            stale=$(awk -F: '$1 == "certified_staleness_available_ms" { print $2 }' <<< "$info")
            members=$(awk -F: '$1 == "certified_staleness_available_by_member_ms" { print $2 }' <<< "$info")
            echo "n$((i + 1)) ${term:-?} ${role:-?} ${stale:-?} $(date +%s.%N | cut -c1-14) ${members:-?}" >> "$work/samples"
        done
        sleep 0.5
    done
) &
sampler=$!

echo "load: $CLIENTS clients, SET, INCR, SADD on -r $KEYSPACE at n1, passes of $PASS requests, for ${DURATION} s"
start=$(date +%s)
passes=0
while (( $(date +%s) - start < DURATION && passes < 1000 )); do
    passes=$((passes + 1))
    timeout $((DURATION + 120)) redis-benchmark -p "${ports[0]}" -c "$CLIENTS" -n "$PASS" -r "$KEYSPACE" -t set,incr,sadd --csv -q 2> /dev/null |
        tr -d '"' | awk -F, -v p="$passes" 'NR > 1 && $1 != "" { split($1, t, ":"); printf "pass %d %s %d requests/s p50 %s p99 %s ms\n", p, tolower(t[1]), $2, $5, $7 }' ||
        echo "pass $passes: redis-benchmark failed"
done
elapsed=$(( $(date +%s) - start ))
sleep 1
kill "$sampler" 2> /dev/null || true
wait "$sampler" 2> /dev/null || true
sampler=

after=()
for i in 0 1 2; do after+=("$(field $i raft_term)"); done
echo "load ran ${elapsed} s in $passes passes"
echo "raft terms (n1 n2 n3) before: ${before[*]} after: ${after[*]}"
for node in n1 n2 n3; do
    roles=$(awk -v n="$node" '$1 == n && $3 != "?" { print $3 }' "$work/samples" | sort -u | tr '\n' ' ')
    terms=$(awk -v n="$node" '$1 == n && $2 != "?" { print $2 }' "$work/samples" | sort -nu | tr '\n' ' ')
    unanswered=$(awk -v n="$node" '$1 == n && ($4 == "?" || $4 == "none")' "$work/samples" | wc -l)
    awk -v n="$node" '$1 == n && $4 != "?" && $4 != "none" { print $4 }' "$work/samples" | sort -n > "$work/stale-$node"
    count=$(wc -l < "$work/stale-$node")
    if (( count == 0 )); then
        echo "$node: roles ${roles}terms ${terms}no staleness sample ($unanswered unanswered)"
        continue
    fi
    median=$(sed -n "$(( (count + 1) / 2 ))p" "$work/stale-$node")
    p99=$(sed -n "$(( count * 99 / 100 > 0 ? count * 99 / 100 : 1 ))p" "$work/stale-$node")
    largest=$(tail -1 "$work/stale-$node")
    over=$(awk '$1 > 1000' "$work/stale-$node" | wc -l)
    echo "$node: roles ${roles}terms ${terms}certified CRDT staleness over $count samples: median $median ms, p99 $p99 ms, largest $largest ms, over 1 s: $over ($unanswered unanswered)"
done
echo "per node after the load (INFO): largest waits of a job for the node's thread (all, consensus priority), reachability changes, whole states sent, retransmissions"
for i in 0 1 2; do
    echo "n$((i + 1)): wait max $(field $i node_wait_max_ms) ms, consensus wait max $(field $i node_wait_consensus_max_ms) ms," \
        "reachability changes $(field $i replication_reachability_changes), whole states $(field $i replication_full_states_sent)," \
        "retransmissions $(field $i replication_retransmissions)"
    echo "    certificates: sent $(field $i replication_certificates_sent), withheld $(field $i replication_certificates_withheld)," \
        "adopted $(field $i replication_certificates_adopted), refused for a gap $(field $i replication_certificates_refused_gap)," \
        "refused for registers it lacked $(field $i replication_certificates_refused_wanting)"
    echo "    lazy relays: held back $(field $i replication_relays_held_back), spared $(field $i replication_relays_spared)," \
        "due $(field $i replication_relays_due), waiting $(field $i replication_relays_waiting); deltas received $(field $i replication_deltas_received)"
done
