#!/usr/bin/env bash
# The one test command (README): installs what is missing on a Debian 12 machine, then
# checks formatting and lints and runs every test against real PostgreSQL and S3
# (moto) servers that the tests start themselves.
#
#   scripts/test.sh                 everything
#   scripts/test.sh --setup-only    only install PostgreSQL, PostGIS, openssl, the python venv
#   scripts/test.sh -- ARGS...      pass ARGS to the test runner (e.g. a test filter)
#
# Environment: PG2LAKE_VENV (default ~/.cache/pg2lake-venv), CARGO_TARGET_DIR (default
# ~/.cache/pg2lake-target), PG_BIN (PostgreSQL bin dir, found when unset).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

setup_only=0
runner_args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --setup-only) setup_only=1 ;;
        --) shift; runner_args=("$@"); break ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

step "system packages (PostgreSQL server, PostGIS, openssl, postgres OS user)"
ensure_system_packages
ensure_postgis

step "python venv for moto and the deltalake reader ($PG2LAKE_VENV)"
ensure_venv

if [ "$setup_only" -eq 1 ]; then
    step "setup done"
    exit 0
fi

echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --features failpoints -- -D warnings"
cargo clippy --all-targets --locked --features failpoints -- -D warnings

step "deploy files: hadolint, kubernetes-validate, metric names (scripts/check_deploy.py)"
"$PG2LAKE_VENV/bin/python" scripts/check_deploy.py

# Doc tests first: nextest does not run them, and the runner's summary should be the
# last thing printed.
# The tests build pg2lake with the failpoints the fault tests kill it at (compiled out of
# every other build).
step "cargo test --doc"
cargo test --doc --locked --features failpoints

if cargo nextest --version >/dev/null 2>&1; then
    step "cargo nextest run"
    cargo nextest run --locked --no-fail-fast --features failpoints "${runner_args[@]}"
else
    step "cargo test (cargo-nextest not installed)"
    cargo test --locked --no-fail-fast --features failpoints "${runner_args[@]}"
fi
