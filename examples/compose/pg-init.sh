#!/bin/sh
# PostgreSQL's first start (docker-entrypoint-initdb.d): the demo shop and the gateway's
# login. The password comes from the file `init` wrote, through a psql variable on stdin.
set -eu
psql -v ON_ERROR_STOP=1 -U postgres -d postgres -c "CREATE DATABASE shop"
psql -v ON_ERROR_STOP=1 -U postgres -d shop -f /compose/schema.sql
printf '%s\n' "ALTER ROLE shop_agent LOGIN PASSWORD :'pw';" |
    psql -v ON_ERROR_STOP=1 -U postgres -d shop -v pw="$(cat /etc/bulwark/for-postgres/shop_agent.password)"
