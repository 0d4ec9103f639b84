#!/usr/bin/env bash
# Install every Debian and npm package Bulwark needs to build, test, benchmark and demo.
#
# Idempotent and quick when everything is present: Debian packages are checked with
# dpkg-query first and apt-get runs only for what is missing; `npm ci` for the integration
# tests' node clients runs only when node_modules does not match package-lock.json (a stamp
# file holds the lock's hash). Non-interactive. Runs as root, or uses sudo for apt-get when
# not root (and says what to install when sudo is not available either).
#
# Usage: scripts/install-deps.sh [--no-npm]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
node_dir="$root/tests/integration/node"
want_npm=1
for arg in "$@"; do
    case "$arg" in
        --no-npm) want_npm=0 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "install-deps: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

# Build: compiler, libraries (-dev), unit-test, sanitizer and fuzzing tools (libFuzzer is in
# libclang-rt-14-dev).
build_pkgs=(
    gcc make pkg-config clang clang-format valgrind libclang-rt-14-dev
    libev-dev libpg-query-dev libcjson-dev liblmdb-dev libssl-dev libpq-dev
    libcmocka-dev libcurl4-openssl-dev libvectorscan-dev
)
# Runtime, tests, demo and bench: a real PostgreSQL 15, PgBouncer and pgbench, the Python
# clients the integration tests drive (python3-cryptography signs RS/ES/EdDSA test tokens),
# openssl for throwaway certificates, lmdb-utils to inspect the audit store, procps
# (ps, /proc tools), iproute2 (ss) and util-linux (runuser, for pgtmp.sh as root).
run_pkgs=(
    postgresql-15 postgresql-client-15 postgresql-contrib pgbouncer
    python3 python3-psycopg2 python3-sqlalchemy python3-pytest python3-cryptography
    openssl ca-certificates lmdb-utils procps iproute2 util-linux
)

# One dpkg-query for all: a package it does not know is reported on stderr and missing
# from the output, so anything not listed as installed is missing.
all_pkgs=("${build_pkgs[@]}" "${run_pkgs[@]}")
installed=" $(dpkg-query -W -f='${Package}=${db:Status-Status} ' "${all_pkgs[@]}" 2>/dev/null || true) "
missing=()
for p in "${all_pkgs[@]}"; do
    [[ "$installed" == *" $p=installed "* ]] || missing+=("$p")
done
# Node.js and npm: any installed node >= 20 will do (the machine image may carry a
# non-Debian build that also provides npm); only when the commands are absent install
# Debian's.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "install-deps: not root and no sudo; please install: ${missing[*]}" >&2
        exit 1
    fi
}

if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

node_major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
if ((node_major < 20)); then
    echo "install-deps: warning: node $(node --version 2>/dev/null) is older than 20;" \
         "LangChain.js and TypeORM need node >= 20" >&2
fi

# Node packages for the integration tests (node-pg, pg-cursor, TypeORM, LangChain.js) and
# for the LangChain.js agent example, which the tests run too.
if ((want_npm)); then
    for dir in "$node_dir" "$root/examples/langchain-js"; do
        lock="$dir/package-lock.json"
        stamp="$dir/node_modules/.bulwark-lock.sha256"
        want="$(sha256sum "$lock" "$dir/package.json" | sha256sum | cut -d' ' -f1)"
        have="$(cat "$stamp" 2>/dev/null || true)"
        if [[ "$want" != "$have" || ! -d "$dir/node_modules" ]]; then
            echo "install-deps: npm ci in ${dir#"$root"/}" >&2
            (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
            echo "$want" >"$stamp"
        fi
    done
fi
echo "install-deps: all dependencies present" >&2
