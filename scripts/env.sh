# Sourced by the other scripts: a build directory that survives clones.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/vmqtt-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
