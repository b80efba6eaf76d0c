#!/usr/bin/env bash
# muster against the best-known peer queues in one sitting, by the peers' method
# (/work/shared/peers/README.md: one call per job, 16 producers, 20,000 jobs, then 200 idle
# probes 20 ms apart): Celery + Redis and pg-boss on PostgreSQL, RUNS times each (default 3),
# then `muster bench --peer-style` RUNS times. One line per system with its medians, and the
# ratio muster / best peer. The peers run from a copy (they write next to themselves) that is
# kept between runs in PEERS_WORK, so their npm packages and venv are installed once.
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
PEERS_SRC=${PEERS_SRC:-/work/shared/peers}
PEERS_WORK=${PEERS_WORK:-${TMPDIR:-/tmp}/muster-peers}
mkdir -p "$PEERS_WORK"
cp -r "$PEERS_SRC/." "$PEERS_WORK/"
chmod -R u+w "$PEERS_WORK"

median() { sort -g | awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]}'; }
# The value of key $1 in the line $2 (the peers print key=value pairs).
value() { { grep -oP "(?<![a-z_])$1=\K[0-9.]+" <<<"$2" || true; } | tail -1; }

declare -A peer_line
for peer in celery pgboss; do
  echo "== $peer: RUNS=$RUNS" >&2
  out=$(RUNS=$RUNS bash "$PEERS_WORK/$peer/run.sh" | tee /dev/stderr) || true
  peer_line[$peer]=$(grep 'jobs_per_s=' <<<"$out" | grep -v '^RESULT' | tail -1 || true)
done

echo "== muster bench --peer-style: RUNS=$RUNS" >&2
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
tp=(); enq=(); p50=(); p99=(); cpu=(); disk=()
for _ in $(seq "$RUNS"); do
  # A run with errors exits non-zero but still reports; its errors are shown below.
  r=$($MUSTER bench --peer-style --json) || true
  tp+=("$(field 'd["tasks_per_s"]' <<<"$r")")
  enq+=("$(field 'd["submit_per_s"]' <<<"$r")")
  p50+=("$(field 'd["idle_submit_to_claim"]["p50_ms"]' <<<"$r")")
  p99+=("$(field 'd["idle_submit_to_claim"]["p99_ms"]' <<<"$r")")
  cpu+=("$(field 'd["server_usage"]["cpu_us_per_task"]' <<<"$r")")
  disk+=("$(field 'd["server_usage"]["disk_write_bytes_per_task"] or 0' <<<"$r")")
  echo "muster run: $(field '"%.0f tasks/s, idle p50 %.2f ms, %d errors" % (d["tasks_per_s"], d["idle_submit_to_claim"]["p50_ms"], d["errors"])' <<<"$r")" >&2
done
m_tp=$(printf '%s\n' "${tp[@]}" | median)

best=""; best_tp=0
for peer in celery pgboss; do
  t=$(value jobs_per_s "${peer_line[$peer]}")
  if [ -n "$t" ] && python3 -c "import sys; sys.exit(0 if $t > $best_tp else 1)"; then
    best=$peer; best_tp=$t
  fi
done
ratio() { python3 -c "print(f'{$1 / $2:.1f}' if $2 else 'n/a')"; }
for peer in celery pgboss; do
  l=${peer_line[$peer]}
  if [ -z "$l" ]; then
    echo "$peer: no result (see its output above)"
    continue
  fi
  t=$(value jobs_per_s "$l")
  echo "$peer: $t jobs/s, enqueue $(value enqueue_per_s "$l")/s, idle p50 $(value p50_ms "$l") ms p99 $(value p99_ms "$l") ms (medians of $RUNS); muster/$peer $(ratio "$m_tp" "$t")x"
done
printf 'muster --peer-style: %.0f tasks/s, submit phase %.0f/s, idle p50 %.2f ms p99 %.2f ms, server CPU %.0f us/task, %.0f B/task to disk (medians of %s); ' \
  "$m_tp" "$(printf '%s\n' "${enq[@]}" | median)" "$(printf '%s\n' "${p50[@]}" | median)" \
  "$(printf '%s\n' "${p99[@]}" | median)" "$(printf '%s\n' "${cpu[@]}" | median)" \
  "$(printf '%s\n' "${disk[@]}" | median)" "$RUNS"
if [ -n "$best" ]; then
  echo "muster/best peer ($best) $(ratio "$m_tp" "$best_tp")x"
else
  echo "no peer result to compare with"
fi
