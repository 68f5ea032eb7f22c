#!/usr/bin/env bash
# Memory per key, and a restart, at many keys: a 3-node cluster on loopback with
# --default-policy available (and --fsync everysec unless FSYNC says otherwise) takes KEYS
# distinct SETs (`continuum bench`, 50 clients, each key written once), then prints each
# node's resident memory before and after and the bytes per key, kills one node with kill -9,
# restarts it on its store, and prints how long until it answers, how long until it holds
# every key it should (a sample of SAMPLE keys read at that node with CONTINUUM.GET ... available),
# and its memory then. Before the cluster, redis-server (no persistence) gets the same number of
# 16-byte values (DEBUG POPULATE) and its resident memory per key is printed, side by side.
#
#   bench/many-keys.sh                       # 1,000,000 keys
#   KEYS=100000 bench/many-keys.sh           # shorter
#   CONTINUUM=/tmp/continuum bench/many-keys.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KEYS=${KEYS:-1000000}
SAMPLE=${SAMPLE:-1000}
FSYNC=${FSYNC:-everysec}
VICTIM=${VICTIM:-n2}

for tool in redis-server redis-cli; do
    if ! command -v "$tool" > /dev/null; then
        echo "installing redis-tools (apt-get)"
        apt-get install -y redis-server redis-tools > /dev/null 2>&1 ||
            { apt-get update > /dev/null && apt-get install -y redis-server redis-tools > /dev/null; }
    fi
done
if [[ -z "${CONTINUUM:-}" ]]; then swift build -c release --product continuum 2>&1 | tail -1; fi
continuum=${CONTINUUM:-.build/release/continuum}
work=$(mktemp -d)
cleanup() {
    $continuum cluster down --data-dir "$work" > /dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

rss() { awk '/VmRSS/ { print $2 * 1024 }' "/proc/$1/status"; }
redis-server --port 16499 --save "" --appendonly no --enable-debug-command yes --daemonize no > /dev/null 2>&1 &
redis_pid=$!
for _ in $(seq 50); do redis-cli -p 16499 PING > /dev/null 2>&1 && break; sleep 0.1; done
redis_before=$(rss "$redis_pid")
redis-cli -p 16499 DEBUG POPULATE "$KEYS" bench 16 > /dev/null
redis_after=$(rss "$redis_pid")
echo "redis-server resident: $((redis_before / 1048576)) MiB before, $((redis_after / 1048576)) MiB after $KEYS keys:" \
    "$(((redis_after - redis_before) / KEYS)) bytes per key"
kill "$redis_pid"; wait "$redis_pid" 2> /dev/null || true

$continuum cluster up --nodes 3 --data-dir "$work" --default-policy available --fsync "$FSYNC" > /dev/null
pids() { python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); print(" ".join(n["id"] + "=" + str(n["pid"]) for n in c["members"]))' "$work/cluster.json"; }
declare -A before
for entry in $(pids); do before[${entry%%=*}]=$(rss "${entry#*=}"); done
start=$(date +%s.%N)
$continuum bench --system continuum --endpoints 127.0.0.1:6401 --operations put --requests "$KEYS" --keys "$KEYS" --clients 50 |
    grep -E "put|requests"
echo "loaded $KEYS keys in $(echo "$(date +%s.%N) - $start" | bc) s"
# Anti-entropy: wait (at most 300 s) until the last key written is at every node.
last="bench:$((KEYS - 1))"
for port in 6402 6403; do
    for _ in $(seq 1 300); do
        [[ "$(redis-cli -p $port CONTINUUM.GET "$last" available | head -1)" != "" ]] && break
        sleep 1
    done
done
sleep 2
for entry in $(pids); do
    node=${entry%%=*} after=$(rss "${entry#*=}")
    echo "$node resident: $((before[$node] / 1048576)) MiB before, $((after / 1048576)) MiB after $KEYS keys:" \
        "$(((after - before[$node]) / KEYS)) bytes per key"
done
du -sh "$work"/n*/ 2> /dev/null | sed 's/^/store: /'

echo "kill -9 $VICTIM, then restart it"
$continuum cluster kill --data-dir "$work" --node "$VICTIM" > /dev/null
port=$((6400 + ${VICTIM#n}))
restart=$(date +%s.%N)
$continuum cluster restart --data-dir "$work" --node "$VICTIM" > /dev/null
until redis-cli -p "$port" PING 2> /dev/null | grep -q PONG; do sleep 0.1; done
echo "$VICTIM answers PING $(echo "$(date +%s.%N) - $restart" | bc) s after the restart"
missing=$SAMPLE
for _ in $(seq 1 120); do
    missing=0
    for i in $(seq 0 $((SAMPLE - 1))); do
        key="bench:$(((i * 7919) % KEYS))"
        echo "CONTINUUM.GET $key available"
    done | redis-cli -p "$port" 2> /dev/null | awk 'NR % 5 == 1 && $0 == "" { m++ } END { print m + 0 }' > "$work/missing"
    missing=$(cat "$work/missing")
    [[ "$missing" == 0 ]] && break
    sleep 1
done
echo "$VICTIM holds $((SAMPLE - missing)) of $SAMPLE sampled keys $(echo "$(date +%s.%N) - $restart" | bc) s after the restart"
for entry in $(pids); do
    [[ "${entry%%=*}" == "$VICTIM" ]] && echo "$VICTIM resident after the restart: $(($(rss "${entry#*=}") / 1048576)) MiB"
done
