#!/usr/bin/env bash
# GitOps webhooks: 2,000 signed Gitea pushes, 16 in flight, accepted per second (every one
# must be answered 201, and 20 wrongly signed ones 401); then 200 pushes one at a time, each
# timed from the POST until a waiting agent's long-poll returns its task. One line of results;
# further arguments go to `muster bench webhooks`.
source "$(dirname "$0")/lib.sh"
# A run with errors exits non-zero but still reports (its errors are in the line and on
# stderr); a run that could not be made reports nothing.
status=0
out=$($MUSTER bench webhooks --json "$@") || status=$?
[ -n "$out" ] || exit "$status"
python3 <(cat <<'PY'
import json, sys
r = json.load(sys.stdin)
a, c = r["accept"], r["push_to_claim"]
l, s = c["latency"], a["server"]
line = (f"webhooks: {a['accepted_per_s']:.0f} pushes/s accepted ({a['accepted']}/{a['pushes']} "
        f"answered 201, {a['concurrency']} in flight), hook answer p50 {a['answer']['p50_ms']:.2f} ms "
        f"p99 {a['answer']['p99_ms']:.2f} ms; push->claim p50 {l['p50_ms']:.2f} ms "
        f"p95 {l['p95_ms']:.2f} ms p99 {l['p99_ms']:.2f} ms; "
        f"wrong signature {a['wrong_signature_refused']}/{a['wrong_signature_sent']} refused; "
        f"server CPU {s['cpu_us_per_hook']:.0f} us/hook")
if s["disk_write_bytes_per_hook"] is not None:
    line += f", {s['disk_write_bytes_per_hook']:.0f} B/hook to disk"
print(line + f"; errors {r['errors']}")
PY
) <<<"$out"
exit "$status"
