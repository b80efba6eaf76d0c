#!/usr/bin/env bash
# Size of the stripped release binary (the release profile strips symbols).
source "$(dirname "$0")/lib.sh"
bytes=$(stat -c %s "$MUSTER")
python3 -c "print(f'release binary: {$bytes / 1048576:.2f} MiB ($bytes bytes, stripped)')"
