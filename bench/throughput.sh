#!/usr/bin/env bash
# End-to-end tasks/s and latency: submit → claim → complete, SQLite with synchronous=FULL,
# 8 agents × 4 slots, 20,000 tasks; then idle submit→claim probes. One line of results.
# MODE=peer-style (the peer queues' method) or MODE=batch (bulk submit) picks the mode;
# further arguments go to `muster bench`.
source "$(dirname "$0")/lib.sh"
case "${MODE:-default}" in
  default) mode=() ;;
  peer-style) mode=(--peer-style) ;;
  batch) mode=(--batch) ;;
  *) echo "MODE must be default, peer-style or batch, not ${MODE}" >&2; exit 2 ;;
esac
# A run with errors exits non-zero but still reports (its errors are in the line); a run that
# could not be made reports nothing and its message is already on stderr.
status=0
out=$($MUSTER bench --json "${mode[@]}" "$@") || status=$?
[ -n "$out" ] || exit "$status"
python3 <(cat <<'PY'
import json, sys
r = json.load(sys.stdin)
c, i, u = r["submit_to_claim"], r["idle_submit_to_claim"], r["server_usage"]
line = (f"{r['mode']}: {r['tasks_per_s']:.0f} tasks/s (submit phase {r['submit_per_s']:.0f}/s); "
        f"submit->claim under load p50 {c['p50_ms']:.2f} ms p99 {c['p99_ms']:.2f} ms; "
        f"idle submit->claim p50 {i['p50_ms']:.3f} ms p99 {i['p99_ms']:.3f} ms; errors {r['errors']}")
if u:
    line += f"; server RSS {u['peak_rss_mib']:.1f} MiB, CPU {u['cpu_us_per_task']:.0f} us/task"
    if u["disk_write_bytes_per_task"] is not None:
        line += f", {u['disk_write_bytes_per_task']:.0f} B/task to disk"
    if u["wal"]:
        line += f", {u['wal']['frames_per_commit']:.1f} WAL frames/commit"
print(line)
PY
) <<<"$out"
exit "$status"
