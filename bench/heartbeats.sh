#!/usr/bin/env bash
# Server CPU share while 10,000 agents heartbeat every 30 s (333 beats/s), over 60 s.
source "$(dirname "$0")/lib.sh"
$MUSTER bench heartbeats "$@"
