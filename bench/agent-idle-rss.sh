#!/usr/bin/env bash
# Resident memory of an idle `muster agent` with the llm executor and one stdio MCP server
# configured (started per session, so not running while idle), beside the same agent without
# [llm] and [[mcp.servers]]: each registered with a local `muster serve`, then idle 2 s.
# The median of RUNS runs (default 3) of each.
source "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
work=$(mktemp -d)
serve_pid=""
trap '[ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
ADDR="127.0.0.1:$port" DB_PATH="$work/muster.db" $MUSTER serve >"$work/serve.log" 2>&1 &
serve_pid=$!

# Waits (at most 20 s) until the agent named $1 is registered and online.
registered() {
  python3 - "$url" "$1" <<'EOF'
import json, sys, time, urllib.request
url, agent = sys.argv[1], sys.argv[2]
deadline = time.time() + 20
while time.time() < deadline:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/agents/{agent}") as r:
            if json.load(r)["status"] == "online":
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.05)
sys.exit(f"agent {agent} did not register within 20 s")
EOF
}

cat >"$work/plain.toml" <<'EOF'
[agent]
id = "plain"

[[actions]]
name = "check_disk"
argv = ["df", "-h", "{mount}"]
params = { mount = "^/[a-zA-Z0-9_/.-]{0,200}$" }
EOF
cp "$work/plain.toml" "$work/llm.toml"
sed -i 's/^id = "plain"/id = "llm"/' "$work/llm.toml"
cat >>"$work/llm.toml" <<'EOF'

[llm]
provider = "local"

[[mcp.servers]]
name = "notes"
command = "npx"
args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/notes"]
tools = ["read_text_file", "list_directory"]
EOF

# Resident memory (MiB) of the agent of config $1 (id $2) once registered and idle 2 s.
agent_rss() {
  $MUSTER agent --config "$1" --url "$url" >"$work/agent.log" 2>&1 &
  local pid=$!
  registered "$2"
  sleep 2
  local kib
  kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  python3 -c "print(f'{$kib / 1024:.2f}')"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
llm=(); plain=()
for _ in $(seq "$RUNS"); do
  llm+=("$(agent_rss "$work/llm.toml" llm)")
  plain+=("$(agent_rss "$work/plain.toml" plain)")
done
echo "idle muster agent RSS: $(printf '%s\n' "${llm[@]}" | median) MiB with [llm] and one stdio MCP server (runs: ${llm[*]}), $(printf '%s\n' "${plain[@]}" | median) MiB without (runs: ${plain[*]})"
