# Sourced by the scripts that build the simulation: the madsim build in its own target dir (so
# it never rebuilds the normal one), optimised because thousands of seeds must run in minutes,
# with debug assertions and overflow checks kept on so openraft's and our own internal
# assertions still guard every simulated run.
export CARGO_TARGET_DIR="${MADSIM_TARGET_DIR:-$PWD/target-madsim}"
export RUSTFLAGS="--cfg madsim"
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true
export CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
