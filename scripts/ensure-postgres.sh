#!/usr/bin/env bash
# Make sure a PostgreSQL server answers for the tests, and print its SQLAlchemy URL on stdout.
#
# Order: $OPTIINFRA_TEST_DATABASE_URL if set (any server you run yourself); else the local cluster of a
# Debian/Ubuntu `postgresql` package, started with pg_ctlcluster (it refuses to run as root by itself;
# pg_ctlcluster switches to the postgres user), installed with apt-get first when we are root and it is
# missing. Everything else goes to stderr so the caller can capture the URL.
#
# The tests connect as a dedicated role (optiinfra_test: LOGIN CREATEDB, no superuser) whose password is
# generated once and kept owner-only in $OPTIINFRA_TEST_PG_PASSWORD_FILE; the machine's `postgres`
# superuser and its password are never touched. Running it again reuses the role, password and database.
set -euo pipefail
if [ -n "${OPTIINFRA_TEST_DATABASE_URL:-}" ]; then echo "$OPTIINFRA_TEST_DATABASE_URL"; exit 0; fi

ROLE=optiinfra_test
DB=optiinfra_test
PASSWORD_FILE=${OPTIINFRA_TEST_PG_PASSWORD_FILE:-${XDG_CONFIG_HOME:-$HOME/.config}/optiinfra/test-postgres-password}
if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-postgres: installing PostgreSQL with apt-get" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
  else
    echo "ensure-postgres: no PostgreSQL found; set OPTIINFRA_TEST_DATABASE_URL (see README)" >&2
    exit 1
  fi
fi
VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
CLUSTER=$(pg_lsclusters -h 2>/dev/null | awk -v v="$VERSION" '$1==v {print $2; exit}')
if [ -z "$CLUSTER" ]; then
  pg_createcluster "$VERSION" main >&2
  CLUSTER=main
fi
PORT=$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1==v && $2==c {print $3}')
if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1==v && $2==c {print $4}' | grep -q online; then
  pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi
# From /: the postgres user may not be allowed into the current folder (a root-only CI clone).
as_postgres() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else (cd / && sudo -u postgres "$@"); fi; }
for _ in $(seq 1 30); do as_postgres psql -p "$PORT" -qtAc 'select 1' >/dev/null 2>&1 && break; sleep 1; done
if [ ! -s "$PASSWORD_FILE" ]; then
  mkdir -p -m 700 "$(dirname "$PASSWORD_FILE")"
  # Letters and digits only: safe unquoted in a URL and in an SQL literal.
  generated=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
  (umask 077; printf '%s' "${generated:0:32}" >"$PASSWORD_FILE")
fi
PGPASS=$(cat "$PASSWORD_FILE")
case "$PGPASS" in *[!A-Za-z0-9]* | "") echo "ensure-postgres: bad password in $PASSWORD_FILE" >&2; exit 1 ;; esac
# Through stdin, not argv: the password never shows in the process list.
as_postgres psql -p "$PORT" -qtA -v ON_ERROR_STOP=1 >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN CREATEDB NOSUPERUSER PASSWORD '$PGPASS';
  ELSE
    ALTER ROLE $ROLE LOGIN CREATEDB NOSUPERUSER PASSWORD '$PGPASS';
  END IF;
END \$\$;
SQL
if [ "$(as_postgres psql -p "$PORT" -qtAc "SELECT 1 FROM pg_database WHERE datname='$DB'")" != 1 ]; then
  as_postgres psql -p "$PORT" -qtAc "CREATE DATABASE $DB OWNER $ROLE" >/dev/null
else
  # A database left by an earlier version of this script belongs to postgres: hand it to the role.
  as_postgres psql -p "$PORT" -qtAc "ALTER DATABASE $DB OWNER TO $ROLE" >/dev/null
fi
echo "postgresql+psycopg2://$ROLE:$PGPASS@127.0.0.1:$PORT/$DB"
