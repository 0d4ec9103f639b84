#!/bin/sh
# docker-compose `init`: fill the bulwark-etc volume (mounted at /etc/bulwark) once.
# Runs as root in the bulwark base image; the gateway's files end up owned by the
# bulwark user (0600 for secrets), PostgreSQL's copy of the passwords by uid 999.
set -eu
etc=/etc/bulwark
if [ -f "$etc/.initialised" ]; then
    echo "init: $etc already set up"
    exit 0
fi
umask 077
mkdir -p "$etc/certs" "$etc/keys" "$etc/secrets" "$etc/policies" "$etc/for-postgres"
cp /compose/bulwark.json "$etc/bulwark.json"
cp /compose-policies/demo.json "$etc/policies/demo.json"

# A throwaway CA and a server certificate for the names clients use.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=bulwark example CA" -keyout "$etc/certs/ca.key" -out "$etc/certs/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bulwark" \
    -keyout "$etc/certs/server.key" -out "$etc/certs/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:bulwark,DNS:localhost,IP:127.0.0.1\n' > "$etc/certs/san.ext"
openssl x509 -req -in "$etc/certs/server.csr" -CA "$etc/certs/ca.crt" -CAkey "$etc/certs/ca.key" \
    -CAcreateserial -days 825 -extfile "$etc/certs/san.ext" -out "$etc/certs/server.crt" 2>/dev/null
rm -f "$etc/certs/server.csr" "$etc/certs/san.ext" "$etc/certs/ca.key" "$etc/certs/ca.srl"

# The token secret (HS256, development only) and the upstream password.
openssl rand -hex 32 > "$etc/keys/demo.secret"
openssl rand -hex 24 > "$etc/secrets/shop_agent.password"
openssl rand -hex 24 > "$etc/for-postgres/superuser.password"
cp "$etc/secrets/shop_agent.password" "$etc/for-postgres/shop_agent.password"

chown -R bulwark:bulwark "$etc"
chown -R 999:999 "$etc/for-postgres"
chmod 0755 "$etc" "$etc/certs" "$etc/policies"
chmod 0644 "$etc/bulwark.json" "$etc/policies/demo.json" "$etc/certs/ca.crt" "$etc/certs/server.crt"
chmod 0700 "$etc/keys" "$etc/secrets" "$etc/for-postgres"
/usr/bin/bulwark check -c "$etc/bulwark.json"
touch "$etc/.initialised"
echo "init: wrote $etc"
