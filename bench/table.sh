#!/usr/bin/env bash
# Every figure of DESIGN.md's table and the GitOps webhooks figure, each the median of RUNS
# runs (default 5); the figures go to docs/PERFORMANCE.md. Takes about 15 minutes with the
# defaults.
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-5}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
tp=(); p50=(); p99=()
for _ in $(seq "$RUNS"); do
  r=$($MUSTER bench --json)
  tp+=("$(field 'd["tasks_per_s"]' <<<"$r")")
  p50+=("$(field 'd["idle_submit_to_claim"]["p50_ms"]' <<<"$r")")
  p99+=("$(field 'd["idle_submit_to_claim"]["p99_ms"]' <<<"$r")")
done
echo "end-to-end tasks/s: $(printf '%s\n' "${tp[@]}" | median)"
echo "idle submit->claim: p50 $(printf '%s\n' "${p50[@]}" | median) ms, p99 $(printf '%s\n' "${p99[@]}" | median) ms"
rss=(); start=(); hb=()
for _ in $(seq "$RUNS"); do
  rss+=("$($MUSTER bench idle-memory --json | field 'd["rss_mib"]')")
  start+=("$($MUSTER bench startup --runs 20 --json | field 'd["median_ms"]')")
done
echo "idle RSS: $(printf '%s\n' "${rss[@]}" | median) MiB"
echo "start to first /health 200: $(printf '%s\n' "${start[@]}" | median) ms"
bash "$(dirname "$0")/binary-size.sh"
for _ in $(seq "$RUNS"); do
  hb+=("$($MUSTER bench heartbeats --duration 30s --json | field 'd["cpu_percent"]')")
done
echo "10,000 agents heartbeating every 30 s: $(printf '%s\n' "${hb[@]}" | median)% of one core"
wh=(); wp50=(); wp99=()
for _ in $(seq "$RUNS"); do
  r=$($MUSTER bench webhooks --json)
  wh+=("$(field 'd["accept"]["accepted_per_s"]' <<<"$r")")
  wp50+=("$(field 'd["push_to_claim"]["latency"]["p50_ms"]' <<<"$r")")
  wp99+=("$(field 'd["push_to_claim"]["latency"]["p99_ms"]' <<<"$r")")
done
echo "GitOps webhooks: $(printf '%s\n' "${wh[@]}" | median) signed pushes/s accepted, push->claim p50 $(printf '%s\n' "${wp50[@]}" | median) ms, p99 $(printf '%s\n' "${wp99[@]}" | median) ms"
echo "queue depth (one run): $($MUSTER bench queue-depth)"
