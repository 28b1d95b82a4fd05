#!/bin/bash
# Run once by the pgvector/pgvector image when it initialises an empty data directory
# (/docker-entrypoint-initdb.d): lets the compose `replica` service stream WAL from this
# server. The official image's pg_hba.conf admits "all" databases, which does not cover
# replication connections.
set -euo pipefail
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
