#!/usr/bin/env bash
# Claim latency (submit→claim of a probe) and server memory at 1k, 100k and 1M queued tasks
# that no agent can take. Filling 1M tasks over HTTP takes a minute or two.
source "$(dirname "$0")/lib.sh"
$MUSTER bench queue-depth "$@"
