#!/usr/bin/env bash
# Side by side on this machine, in one run: redis-server (AOF, appendfsync everysec, then
# always) and a 3-node Continuum cluster on loopback (--default-policy available, then
# linearizable), all driven by redis-benchmark with the same clients and requests. Each
# system is started, measured and stopped in turn, so the machine's noise falls on all of them.
#
# For each system: SET, GET, INCR and SADD, once on one key and once on random keys
# (-r KEYSPACE); then SADD into an empty set and into a set of SETSIZE members. It prints requests per second, p50 and p99 (ms), each figure's ratio to redis
# `everysec`, and for Continuum the Raft term on every node before and after its runs (a
# change means consensus lost its leader under the load).
#
#   bench/compare-redis.sh                          # 50 clients, 100,000 requests, -r 100000
#   REQUESTS=20000 bench/compare-redis.sh           # shorter
#   FSYNC=everysec bench/compare-redis.sh           # Continuum's durability mode (default: always)
#   SYSTEMS="redis-everysec available" bench/compare-redis.sh
#   SYSTEMS="redis-everysec available available-tls" bench/compare-redis.sh   # the cost of TLS (cluster up --tls)
#   CONTINUUM=/tmp/continuum-before bench/compare-redis.sh   # a saved binary, not a fresh build
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-50}
REQUESTS=${REQUESTS:-100000}
KEYSPACE=${KEYSPACE:-100000}
TESTS=${TESTS:-set,get,incr,sadd}
SETSIZE=${SETSIZE:-100000}
FSYNC=${FSYNC:-always}
SYSTEMS=${SYSTEMS:-redis-everysec redis-always available linearizable}

for tool in redis-server redis-benchmark redis-cli; do
    if ! command -v "$tool" > /dev/null; then
        echo "installing redis-server and redis-tools (apt-get)"
        apt-get install -y redis-server redis-tools > /dev/null 2>&1 ||
            { apt-get update > /dev/null && apt-get install -y redis-server redis-tools > /dev/null; }
        break
    fi
done
redis-server --version
if [[ -z "${CONTINUUM:-}" ]]; then swift build -c release --product continuum 2>&1 | tail -1; fi
continuum=${CONTINUUM:-.build/release/continuum}  # CONTINUUM=path measures another build

work=$(mktemp -d)
redis_pid=
cleanup() {
    [[ -n "$redis_pid" ]] && kill "$redis_pid" 2> /dev/null || true
    $continuum cluster down --data-dir "$work/continuum" > /dev/null 2>&1 || true
    wait 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
results="$work/results.csv"
# redis-cli and redis-benchmark options for a cluster serving TLS (available-tls, linearizable-tls).
TLSARGS=()
: > "$results"

# run SYSTEM PORT KEYS: one redis-benchmark pass per test, appended to the results as
# system,keys,test,rps,p50,p99.
run() {
    local system=$1 port=$2 keys=$3 random=()
    [[ "$keys" == "one" ]] || random=(-r "$KEYSPACE")
    redis-benchmark "${TLSARGS[@]}" -p "$port" -c "$CLIENTS" -n "$REQUESTS" -t "$TESTS" "${random[@]}" --csv -q 2> /dev/null |
        tr -d '"' | awk -F, -v s="$system" -v k="$keys" 'NR > 1 && $1 != "" {
            split($1, t, ":"); printf "%s,%s,%s,%d,%s,%s\n", s, k, tolower(t[1]), $2, $5, $7; fflush() }' | tee -a "$results"
}

# setsize SYSTEM PORT: SADD of new members into an empty set, then into a set of SETSIZE
# members (filled first, 1,000 members per command): the cost of an update must not grow with
# the state.
setsize() {
    local system=$1 port=$2
    seq 0 999 | awk -v n="$SETSIZE" '{ printf "SADD large"; for (i = $1; i < n; i += 1000) printf " m%d", i; printf "\n" }' |
        redis-cli "${TLSARGS[@]}" -p "$port" > /dev/null
    echo "filled 'large' with $(redis-cli "${TLSARGS[@]}" -p "$port" SCARD large) members"
    for key in empty large; do
        redis-benchmark "${TLSARGS[@]}" -p "$port" -c "$CLIENTS" -n "$REQUESTS" -r 100000000 --csv -q SADD "$key" "x__rand_int__" 2> /dev/null |
            tr -d '"' | awk -F, -v s="$system" -v k="$key" 'NR > 1 && $1 != "" {
                printf "%s,set-%s,sadd,%d,%s,%s\n", s, k, $2, $5, $7; fflush() }' | tee -a "$results"
    done
}

terms() {
    local line=""
    for port in 16701 16702 16703; do
        line+="$(redis-cli "${TLSARGS[@]}" -p "$port" INFO 2> /dev/null | tr -d '\r' | awk -F: '$1 == "raft_term" { print $2 }') "
    done
    echo "$line"
}

for system in $SYSTEMS; do
    echo "== $system"
    case "$system" in
    redis-*)
        fsync=${system#redis-}
        mkdir -p "$work/$system"
        redis-server --port 16399 --dir "$work/$system" --appendonly yes --appendfsync "$fsync" --save "" \
            --daemonize no > "$work/$system.log" 2>&1 &
        redis_pid=$!
        for _ in $(seq 50); do redis-cli -p 16399 PING > /dev/null 2>&1 && break; sleep 0.1; done
        run "$system" 16399 one
        run "$system" 16399 many
        setsize "$system" 16399
        kill "$redis_pid"; wait "$redis_pid" 2> /dev/null || true; redis_pid=
        ;;
    available | linearizable | available-tls | linearizable-tls)
        tls=()
        TLSARGS=()
        if [[ "$system" == *-tls ]]; then
            tls=(--tls)
            TLSARGS=(--tls --cacert "$work/continuum/tls/ca.pem")
        fi
        $continuum cluster up --nodes 3 --data-dir "$work/continuum" --base-port 17300 --resp-base-port 16700 \
            --metrics-base-port 0 --default-policy "${system%-tls}" --fsync "$FSYNC" "${tls[@]}" > /dev/null
        before=$(terms)
        run "$system" 16701 one
        run "$system" 16701 many
        setsize "$system" 16701
        after=$(terms)
        staleness=$(redis-cli "${TLSARGS[@]}" -p 16701 INFO | tr -d '\r' | awk -F: '$1 == "certified_staleness_available_ms" { print $2 }')
        echo "raft terms (n1 n2 n3) before: $before after: $after; certified available staleness at n1 after: ${staleness} ms"
        # How long a call into each node's actor waited at most: at the priority of client work,
        # and at the priority of consensus messages and timers (which go ahead of client work).
        waits=""
        for port in 16701 16702 16703; do
            waits+="$(redis-cli "${TLSARGS[@]}" -p "$port" INFO 2> /dev/null | tr -d '\r' |
                awk -F: '$1 == "node_wait_max_ms" { c = $2 } $1 == "node_wait_consensus_max_ms" { r = $2 } END { printf "%s/%s ", c, r }')"
        done
        echo "largest actor wait (ms, client/consensus priority) at n1 n2 n3: $waits"
        echo "$system,waits,$waits" >> "$work/terms.csv"
        echo "$system,terms,$before,$after" >> "$work/terms.csv"
        $continuum cluster down --data-dir "$work/continuum" > /dev/null
        rm -rf "$work/continuum"
        TLSARGS=()
        ;;
    *) echo "unknown system $system"; exit 2 ;;
    esac
done

echo
echo "== summary: $CLIENTS clients, $REQUESTS requests per test, random keys from $KEYSPACE; Continuum --fsync $FSYNC"
echo "== ratios are to redis-everysec (rps: higher is better; p99: lower is better)"
awk -F, '
    { key = $2 "," $3; rps[$1 "," key] = $4; p50[$1 "," key] = $5; p99[$1 "," key] = $6
      if (!($1 in seen)) { seen[$1] = 1; systems[++n] = $1 }
      if (!(key in seenkey)) { seenkey[key] = 1; keys[++m] = key } }
    END {
        printf "%-9s %-5s", "keys", "test"
        for (i = 1; i <= n; i++) printf " | %-22s", systems[i] " rps p50 p99"
        printf " | %s\n", "available/linearizable rps"
        for (j = 1; j <= m; j++) {
            split(keys[j], kt, ","); printf "%-9s %-5s", kt[1], kt[2]
            base = rps["redis-everysec," keys[j]]
            for (i = 1; i <= n; i++) {
                r = rps[systems[i] "," keys[j]]
                ratio = (base > 0 && r != "") ? sprintf("%.2fx", r / base) : "-"
                printf " | %7s %5s %5s %6s", r, p50[systems[i] "," keys[j]], p99[systems[i] "," keys[j]], ratio
            }
            a = rps["available," keys[j]]; l = rps["linearizable," keys[j]]
            printf " | %s\n", (a != "" && l > 0) ? sprintf("%.2fx", a / l) : "-"
        }
    }' "$results"
[[ -f "$work/terms.csv" ]] && { echo "== raft terms (n1 n2 n3)"; cat "$work/terms.csv"; }
