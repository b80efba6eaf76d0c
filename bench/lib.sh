# Shared by the bench scripts: build the stripped release binary once, then run it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -q -p muster --bin muster
MUSTER=${CARGO_TARGET_DIR:-./target}/release/muster
