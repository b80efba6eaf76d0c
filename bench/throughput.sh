#!/usr/bin/env bash
# End-to-end tasks/s and latency: submit → claim → complete, SQLite with synchronous=FULL,
# 8 agents × 4 slots, 20,000 tasks; then idle submit→claim probes. One line of results.
source "$(dirname "$0")/lib.sh"
$MUSTER bench --json "$@" | python3 -c '
import json, sys
r = json.load(sys.stdin)
c, i = r["submit_to_claim"], r["idle_submit_to_claim"]
print(f"{r[\"tasks_per_s\"]:.0f} tasks/s; submit->claim under load p50 {c[\"p50_ms\"]:.2f} ms p99 {c[\"p99_ms\"]:.2f} ms; "
      f"idle submit->claim p50 {i[\"p50_ms\"]:.3f} ms p99 {i[\"p99_ms\"]:.3f} ms; errors {r[\"errors\"]}; "
      f"server RSS {r[\"server_usage\"][\"peak_rss_mib\"]:.1f} MiB")'
