#!/usr/bin/env bash
# SADD into one large set on a fresh 3-node available cluster: fill a set with SETSIZE members
# (1,000 members per command), then 50 clients SADD new members for REQUESTS requests. Prints
# requests per second with p50/p99, and each node's Raft term, reachability changes (SWIM), whole
# states sent and received, and largest actor wait at client and consensus priority. Whole
# states of a large register and reachability changes under this load are what to look at.
#
#   bench/large-set.sh                         # 100,000 members, 50,000 SADDs, --fsync always
#   FSYNC=everysec bench/large-set.sh
#   CONTINUUM=/tmp/continuum bench/large-set.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SETSIZE=${SETSIZE:-100000}
REQUESTS=${REQUESTS:-50000}
FSYNC=${FSYNC:-always}
for tool in redis-benchmark redis-cli; do
    if ! command -v "$tool" > /dev/null; then
        echo "installing redis-tools (apt-get)"
        apt-get install -y redis-tools > /dev/null 2>&1 || { apt-get update > /dev/null && apt-get install -y redis-tools > /dev/null; }
        break
    fi
done
if [[ -z "${CONTINUUM:-}" ]]; then swift build -c release --product continuum 2>&1 | tail -1; fi
continuum=${CONTINUUM:-.build/release/continuum}
work=$(mktemp -d)
trap '$continuum cluster down --data-dir "$work" > /dev/null 2>&1 || true; rm -rf "$work"' EXIT
$continuum cluster up --nodes 3 --data-dir "$work" --base-port 17400 --resp-base-port 16800 --metrics-base-port 0 \
    --default-policy available --fsync "$FSYNC" > /dev/null
seq 0 999 | awk -v n="$SETSIZE" '{ printf "SADD large"; for (i = $1; i < n; i += 1000) printf " m%d", i; printf "\n" }' |
    redis-cli -p 16801 > /dev/null
echo "filled 'large' with $(redis-cli -p 16801 SCARD large) members; --fsync $FSYNC"
redis-benchmark -p 16801 -c 50 -n "$REQUESTS" -r 100000000 --csv -q SADD large "x__rand_int__" 2> /dev/null |
    tr -d '"' | awk -F, 'NR > 1 && $1 != "" { printf "SADD into the large set: %d requests/s, p50 %s ms, p99 %s ms\n", $2, $5, $7 }'
for node in 1 2 3; do
    redis-cli -p $((16800 + node)) INFO | tr -d '\r' | awk -F: -v n="n$node" '
        { v[$1] = $2 }
        END { printf "%s: raft term %s, reachability changes %s, whole states sent %s received %s, largest actor wait %s ms (consensus priority %s ms)\n",
              n, v["raft_term"], v["replication_reachability_changes"], v["replication_full_states_sent"],
              v["replication_full_states_received"], v["node_wait_max_ms"], v["node_wait_consensus_max_ms"] }'
done
