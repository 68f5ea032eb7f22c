#!/usr/bin/env bash
# Side by side on this machine: a 3-member etcd cluster and a 3-node Continuum cluster, both on
# loopback with their default durability (etcd: fsync per batch; Continuum: SQLite WAL,
# synchronous=FULL, group commit), driven by the same load tool (`continuum bench`: same
# clients, keys and values; Continuum over the Redis protocol, etcd over its v3 HTTP/JSON
# gateway). Runs alternate between the systems, ROUNDS times (default 2), so that the noise of
# a shared machine falls on both.
#
#   bench/compare-etcd.sh                      # 50 clients, 20,000 requests per operation
#   CLIENTS=10 REQUESTS=5000 ROUNDS=3 bench/compare-etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-50}
REQUESTS=${REQUESTS:-20000}
ROUNDS=${ROUNDS:-2}

if ! command -v etcd > /dev/null; then
    echo "installing etcd-server (apt-get)"
    apt-get install -y etcd-server > /dev/null 2>&1 || { apt-get update > /dev/null && apt-get install -y etcd-server > /dev/null; }
fi
etcd --version | head -1
swift build -c release --product continuum 2>&1 | tail -1
continuum=.build/release/continuum

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
    $continuum cluster down --data-dir "$work/continuum" > /dev/null 2>&1 || true
    wait 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

members="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$work/e$i" \
        --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
        --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
        --initial-cluster "$members" --initial-cluster-state new --initial-cluster-token continuum-bench \
        > "$work/e$i.log" 2>&1 &
    pids+=($!)
done
for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:23791 put bench:ready yes > /dev/null 2>&1 && break
    sleep 0.2
done
ETCDCTL_API=3 etcdctl --endpoints http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793 endpoint health
$continuum cluster up --nodes 3 --data-dir "$work/continuum" --base-port 17300 --resp-base-port 16700 --metrics-base-port 19700

for round in $(seq "$ROUNDS"); do
    echo "== round $round"
    $continuum bench --system etcd --endpoints 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 \
        --clients "$CLIENTS" --requests "$REQUESTS"
    $continuum bench --system continuum --endpoints 127.0.0.1:16701,127.0.0.1:16702,127.0.0.1:16703 \
        --clients "$CLIENTS" --requests "$REQUESTS"
done
