#!/usr/bin/env bash
# Make a throwaway CA and a server certificate for localhost (demo and tests only).
#
# Usage: scripts/mkcerts.sh DIR
# Writes DIR/ca.crt, DIR/ca.key, DIR/server.crt, DIR/server.key (CN=localhost,
# subjectAltName DNS:localhost, IP:127.0.0.1; keys mode 0600). Does nothing when all four
# files are already there. scripts/pgtmp.sh --ssl DIR copies the server pair into the data
# directory with the ownership PostgreSQL requires.
set -euo pipefail

if [[ $# -ne 1 || "$1" == -* ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir="$1"
mkdir -p "$dir"
if [[ -s "$dir/ca.crt" && -s "$dir/ca.key" && -s "$dir/server.crt" && -s "$dir/server.key" ]]; then
    exit 0
fi

umask 077
tmp="$(mktemp -d "$dir/.mkcerts.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -keyout "$tmp/ca.key" -out "$tmp/ca.crt" -subj "/CN=Bulwark throwaway CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -new -newkey rsa:2048 -nodes -sha256 \
    -keyout "$tmp/server.key" -out "$tmp/server.csr" -subj "/CN=localhost" 2>/dev/null

cat >"$tmp/server.ext" <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
EOF
openssl x509 -req -sha256 -days 3650 -in "$tmp/server.csr" \
    -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
    -extfile "$tmp/server.ext" -out "$tmp/server.crt" 2>/dev/null

chmod 0600 "$tmp/ca.key" "$tmp/server.key"
chmod 0644 "$tmp/ca.crt" "$tmp/server.crt"
for f in ca.crt ca.key server.crt server.key; do
    mv -f "$tmp/$f" "$dir/$f"
done
echo "mkcerts: wrote $dir/{ca.crt,ca.key,server.crt,server.key}" >&2
