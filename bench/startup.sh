#!/usr/bin/env bash
# Time from exec to the first /health 200 on a fresh database, median of 20 starts.
source "$(dirname "$0")/lib.sh"
$MUSTER bench startup --runs 20 "$@"
