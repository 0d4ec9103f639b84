#!/bin/sh
# docker-compose `agent`: what an AI agent's SQL tool does, through the gateway. It mints
# a short-lived token with the development secret (an identity provider does this in
# production), then runs a read that is allowed and statements the policy refuses.
set -u
token=$(/usr/bin/bulwark token --secret-file /etc/bulwark/keys/demo.secret \
    --iss demo --aud bulwark --sub demo-agent-compose --ttl 10m) || exit 1
export PGPASSWORD="$token"
uri="postgresql://${BULWARK_ROLE:-analyst}@${BULWARK_HOST:-bulwark}:6432/${BULWARK_TARGET:-shop}?sslmode=verify-full&sslrootcert=/etc/bulwark/certs/ca.crt&application_name=compose-agent"
run() {
    echo "agent> $1"
    psql -X -P pager=off "$uri" -c "$1" 2>&1
    echo
}
run "SELECT count(*) AS customers FROM customers"
run "SELECT id, name, email FROM customers ORDER BY id LIMIT 3"
run "DELETE FROM orders"
run "SELECT pg_read_file('/etc/passwd')"
run "DROP TABLE customers"
echo "agent: done (see the refusals above; \`docker compose exec bulwark bulwark sessions -c /etc/bulwark/bulwark.json\` lists the session)"
