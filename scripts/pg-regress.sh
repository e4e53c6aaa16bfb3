#!/usr/bin/env bash
# Runs PostgreSQL's regression suite (pg_regress --use-existing) against PGHOST/PGPORT:
# a direct PostgreSQL or a pgsplice in front of it. Downloads and builds nothing.
#
#   scripts/pg-regress.sh SUITE_DIR OUT_DIR [DIRECT_PORT]
#
# SUITE_DIR: PostgreSQL 15's src/test/regress (from the source package), with regress.so
#   built in it if the C-function tests are to pass. OUT_DIR: results and regression.diffs.
# PGUSER must be a superuser (the suite creates roles); pgsplice needs pool_size at least
# the schedule's concurrency (20) in session mode. OUT_DIR is made writable for the
# server (COPY to and from files there). DIRECT_PORT: a port of the same server
# where the database "regression" is dropped and created first (over the unix socket in
# PGSOCKETDIR, default /var/run/postgresql); without it, it must exist.
# Prints the failing test count and names; exits 0 either way (a report, not a gate).
set -uo pipefail
suite=${1:?SUITE_DIR}; out=${2:?OUT_DIR}; direct=${3:-}
bin=/usr/lib/postgresql/15/lib/pgxs/src/test/regress/pg_regress
[ -x "$bin" ] || { echo "pg_regress not found at $bin (Debian package postgresql-server-dev-15)" >&2; exit 2; }
[ -f "$suite/parallel_schedule" ] || { echo "$suite/parallel_schedule missing: not a regression suite directory" >&2; exit 2; }
mkdir -p "$out/results"
# COPY TO/FROM a file runs in the server process: it must be able to write there.
chmod a+rwx "$out" "$out/results"
if [ -n "$direct" ]; then
  psql -X -q -h "${PGSOCKETDIR:-/var/run/postgresql}" -p "$direct" -U "${PGUSER:-postgres}" -d postgres \
    -c 'DROP DATABASE IF EXISTS regression WITH (FORCE)' -c 'CREATE DATABASE regression TEMPLATE template0' >/dev/null
fi
"$bin" --use-existing --inputdir="$suite" --outputdir="$out" --dlpath="$suite" --bindir=/usr/lib/postgresql/15/bin \
  --host="${PGHOST:-127.0.0.1}" --port="${PGPORT:-5432}" --user="${PGUSER:-postgres}" \
  --schedule="$suite/parallel_schedule" >"$out/pg_regress.out" 2>&1
failed=$(grep -oE '[A-Za-z0-9_.]+ +\.\.\. +(FAILED|failed)' "$out/pg_regress.out" | awk '{print $1}')
echo "failed: $(printf '%s\n' "$failed" | grep -c .)"
printf '%s\n' "$failed" | grep . | tr '\n' ' '; echo
