#!/usr/bin/env bash
# Resident memory of a server that started, answered /health once and idled 2 s.
source "$(dirname "$0")/lib.sh"
$MUSTER bench idle-memory "$@"
