#!/bin/bash
# The compose `replica` service: a PostgreSQL streaming standby of `db`, from the same
# pgvector/pgvector image. On first start its data directory is cloned with
# `pg_basebackup -R` (which writes primary_conninfo and standby.signal); later starts
# resume streaming from where it stopped. Runs as the image's `postgres` user.
set -euo pipefail
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  until pg_isready -h db -U "$PGUSER" -d lookalike; do sleep 1; done
  rm -rf "${PGDATA:?}"/*
  pg_basebackup -h db -U "$PGUSER" -D "$PGDATA" -R -X stream -c fast
  chmod 0700 "$PGDATA"
fi
exec postgres -c hot_standby=on
