#!/usr/bin/env bash
# Seeds by the thousand: every simulation workload, over fresh seed ranges, on every core, until
# the time is up.
#
#   bench/soak.sh HOURS                  # e.g. bench/soak.sh 1, or 0.25 for a quarter of an hour
#   FIRST_SEED=5000000 bench/soak.sh 1   # choose the ranges (default: from the clock, printed)
#   LANES=1 bench/soak.sh 0.1            # one core
#   CONTINUUM=/tmp/continuum bench/soak.sh 1   # a saved binary, not a fresh release build
#
# Each lane runs chunks of CHUNK seeds (default 50), taking the workloads in turn, each chunk a
# `continuum simulate --workload W --first-seed F --seeds CHUNK --no-determinism-check`; chunks
# never share a seed. Every few minutes, and at the end, it prints per workload the seeds run,
# seeds per second and the violations; every failing seed is printed with the command that
# replays it. The nodes per workload are CI's: serializable 3, the others 5. A chunk that has
# started is finished, so the run may pass its time by one chunk. Exit status 1 when any seed
# violated.
set -euo pipefail
cd "$(dirname "$0")/.."
HOURS=${1:-}
if [[ -z "$HOURS" ]] || ! awk -v h="$HOURS" 'BEGIN { exit !(h > 0 && h <= 48) }'; then
    echo "usage: bench/soak.sh HOURS (more than 0, at most 48)" >&2
    exit 2
fi
SECONDS_TOTAL=$(awk -v h="$HOURS" 'BEGIN { printf "%d", h * 3600 }')
LANES=${LANES:-$(nproc)}
CHUNK=${CHUNK:-50}
FIRST_SEED=${FIRST_SEED:-$(( 100000000 + $(date +%s) % 800000000 ))}
WORKLOADS=(gossip available linearizable serializable bounded)
nodes_of() { [[ "$1" == serializable ]] && echo 3 || echo 5; }

if [[ -z "${CONTINUUM:-}" ]]; then
    echo "building the release binary"
    swift build -c release --product continuum 2>&1 | tail -1
fi
continuum=${CONTINUUM:-.build/release/continuum}
work=$(mktemp -d)
echo "soak: ${HOURS} h on $LANES lanes, chunks of $CHUNK seeds from seed $FIRST_SEED; results in $work"

deadline=$(( $(date +%s) + SECONDS_TOTAL ))
lane() {
    local lane=$1 chunk=0
    while (( $(date +%s) < deadline )); do
        local workload=${WORKLOADS[$(( chunk % ${#WORKLOADS[@]} ))]}
        # Chunk k of lane l of a workload: its own range, never another's.
        local round=$(( chunk / ${#WORKLOADS[@]} ))
        local first=$(( FIRST_SEED + (round * LANES + lane) * CHUNK ))
        local start end status=0
        start=$(date +%s.%N)
        "$continuum" simulate --workload "$workload" --nodes "$(nodes_of "$workload")" --first-seed "$first" \
            --seeds "$CHUNK" --no-determinism-check > "$work/lane$lane-chunk$chunk.txt" 2>&1 || status=$?
        end=$(date +%s.%N)
        local summary
        summary=$(grep -E '^seeds: [0-9]+, violations: [0-9]+' "$work/lane$lane-chunk$chunk.txt" | tail -1 || true)
        local seeds violations
        seeds=$(sed -E 's/^seeds: ([0-9]+).*/\1/' <<< "${summary:-seeds: 0, violations: 0}")
        violations=$(sed -E 's/.*violations: ([0-9]+).*/\1/' <<< "${summary:-seeds: 0, violations: 0}")
        if [[ -z "$summary" ]]; then violations=1; fi  # it crashed: count it, keep the output
        echo "$workload $seeds $violations $start $end $first $status" >> "$work/results.txt"
        if (( violations > 0 )); then
            { echo "== $workload, seeds $first...$(( first + CHUNK - 1 )) (exit $status):"
              grep -v '^\[' "$work/lane$lane-chunk$chunk.txt" | grep -iE 'replay|violat|error|fatal' | sort -u | head -20; } >> "$work/failures.txt"
        else
            rm -f "$work/lane$lane-chunk$chunk.txt"
        fi
        chunk=$(( chunk + 1 ))
    done
}

report() {
    [[ -f "$work/results.txt" ]] || { echo "no chunk finished yet"; return; }
    printf "%-14s %10s %12s %11s\n" workload seeds seeds/s violations
    awk '
        { seeds[$1] += $2; violations[$1] += $3; busy[$1] += $5 - $4 }
        END {
            for (w in seeds) printf "%-14s %10d %12.2f %11d\n", w, seeds[w], (busy[w] > 0 ? seeds[w] / busy[w] : 0), violations[w]
        }' "$work/results.txt" | sort
    awk '{ seeds += $2; bad += $3 } END { printf "%-14s %10d %12s %11d\n", "all", seeds, "", bad }' "$work/results.txt"
    if [[ -s "$work/failures.txt" ]]; then echo "failures:"; cat "$work/failures.txt"; fi
}

pids=()
for (( i = 0; i < LANES; i++ )); do lane "$i" & pids+=($!); done
trap 'kill "${pids[@]}" 2> /dev/null || true' INT TERM
while (( $(date +%s) < deadline )); do
    sleep $(( SECONDS_TOTAL < 300 ? SECONDS_TOTAL : 300 ))
    echo "== $(date -u +%H:%M:%S), $(( (deadline - $(date +%s)) / 60 )) minutes left"
    report
done
wait "${pids[@]}"
echo "== done (seeds/s: per core, the seeds of a workload over the time its chunks ran)"
report
[[ ! -s "$work/failures.txt" ]]
