# shellcheck shell=bash
# Shared install steps for scripts/test.sh and scripts/demo.sh (sourced, never run).
#
# Everything here is idempotent: on a machine that already has what is needed it only
# checks and returns, so both scripts can call it on every run. It installs from
# Debian's packages and PyPI only.

PG2LAKE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG2LAKE_HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
export PG2LAKE_VENV="${PG2LAKE_VENV:-$PG2LAKE_HOME/.cache/pg2lake-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PG2LAKE_HOME/.cache/pg2lake-target}"
PG2LAKE_REQUIREMENTS="$PG2LAKE_ROOT/scripts/requirements-test.txt"

# step TITLE: a header that stands out in CI logs.
step() {
    printf '\n==> %s\n' "$*"
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# as_root CMD...: runs CMD as root; sudo only when we are not root (non-interactive
# when there is no terminal, so CI fails fast instead of waiting for a password).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi
    else
        die "need root to run '$*' (not root, and no sudo): install it by hand"
    fi
}

_apt_updated=0
apt_update_once() {
    if [ "$_apt_updated" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        _apt_updated=1
    fi
}

apt_install() {
    apt_update_once
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# pg_bindir: directory holding initdb/pg_ctl/postgres (PG_BIN, then the newest
# /usr/lib/postgresql/*/bin, then pg_config --bindir). Prints nothing when none.
pg_bindir() {
    if [ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/initdb" ]; then
        echo "$PG_BIN"
        return
    fi
    local d
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [ -x "$d/initdb" ]; then
            echo "$d"
            return
        fi
    done
    if command -v pg_config >/dev/null 2>&1; then
        d="$(pg_config --bindir)"
        if [ -x "$d/initdb" ]; then echo "$d"; fi
    fi
}

# ensure_system_packages: PostgreSQL server binaries, openssl, and the `postgres` OS
# user that the test harness runs the server as when we are root (PostgreSQL refuses
# to run as root).
ensure_system_packages() {
    local missing=()
    if [ -z "$(pg_bindir)" ]; then
        apt_update_once
        # Debian 12 ships 15; elsewhere take the distribution's default major version.
        if apt-cache show postgresql-15 >/dev/null 2>&1; then
            missing+=(postgresql-15)
        else
            missing+=(postgresql)
        fi
    fi
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v runuser >/dev/null 2>&1 || missing+=(util-linux)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    [ -n "$(pg_bindir)" ] || die "no PostgreSQL server binaries found after install (set PG_BIN)"
    if [ "$(id -u)" -eq 0 ] && ! getent passwd postgres >/dev/null; then
        echo "creating OS user postgres"
        useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    echo "postgres: $("$(pg_bindir)/postgres" --version)"
    echo "openssl: $(openssl version)"
}

# ensure_postgis: the PostGIS extension for the server's major version (the tests' type
# matrix has geometry and geography columns; the demo does not need it).
ensure_postgis() {
    local major sharedir
    major="$("$(pg_bindir)/postgres" --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')"
    sharedir="$("$(pg_bindir)/pg_config" --sharedir 2>/dev/null || echo "/usr/share/postgresql/$major")"
    if [ ! -f "$sharedir/extension/postgis.control" ]; then
        echo "installing: postgresql-$major-postgis-3"
        apt_install "postgresql-$major-postgis-3"
    fi
    [ -f "$sharedir/extension/postgis.control" ] || die "PostGIS is missing from $sharedir/extension after install"
}

# ensure_venv: the Python venv with the test tools (moto server, deltalake reader),
# rebuilt only when scripts/requirements-test.txt or the interpreter changes.
ensure_venv() {
    local py want have
    if ! command -v python3 >/dev/null 2>&1; then
        apt_install python3 python3-venv
    fi
    # Debian's python3 ships venv without ensurepip unless python3-venv is installed.
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    py="$(command -v python3)"
    want="$( { cat "$PG2LAKE_REQUIREMENTS"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
    have="$(cat "$PG2LAKE_VENV/.requirements.sha256" 2>/dev/null || true)"
    if [ -x "$PG2LAKE_VENV/bin/python" ] && [ "$want" = "$have" ]; then
        echo "venv up to date: $PG2LAKE_VENV"
        return
    fi
    echo "creating venv $PG2LAKE_VENV"
    rm -rf "$PG2LAKE_VENV"
    mkdir -p "$(dirname "$PG2LAKE_VENV")"
    "$py" -m venv "$PG2LAKE_VENV"
    "$PG2LAKE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$PG2LAKE_REQUIREMENTS"
    "$PG2LAKE_VENV/bin/python" -c 'import deltalake, pyarrow, boto3, moto; print("deltalake", deltalake.__version__, "pyarrow", pyarrow.__version__, "moto", moto.__version__)'
    [ -x "$PG2LAKE_VENV/bin/moto_server" ] || die "moto_server missing from $PG2LAKE_VENV"
    echo "$want" >"$PG2LAKE_VENV/.requirements.sha256"
}
