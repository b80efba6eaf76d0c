#!/usr/bin/env bash
# First throughput figure: submit → claim → complete over HTTP with 4 agents, 3 runs, each on a
# fresh SQLite file (synchronous=FULL) served by the release binary; prints each run and the
# median. The full instrument is `muster bench` (a later issue).
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-20000}
RUNS=${RUNS:-3}
cargo build --release -q -p muster --bin muster --example loadloop
results=()
for run in $(seq 1 "$RUNS"); do
  dir=$(mktemp -d)
  port=$((20000 + RANDOM % 20000))
  DB_PATH="$dir/muster.db" ADDR="127.0.0.1:$port" RUST_LOG=warn ./target/release/muster serve &
  pid=$!
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.05; done
  line=$(./target/release/examples/loadloop "http://127.0.0.1:$port" "$TASKS" 4 8 16)
  echo "run $run: $line"
  results+=("$(sed -E 's/.*tasks_per_s=([0-9]+).*/\1/' <<<"$line")")
  kill "$pid"; wait "$pid" || true
  rm -rf "$dir"
done
median=$(printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "median tasks/s over $RUNS runs: $median"
