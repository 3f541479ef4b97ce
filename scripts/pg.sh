#!/usr/bin/env bash
# scripts/pg.sh [URL]: makes sure PostgreSQL answers at URL (default $DATABASE_URL, else
# postgres://netwatch:netwatch@127.0.0.1:5432/netwatch?sslmode=disable) and that the role
# and the database the URL names exist. When nothing answers on a local address, it starts
# Debian's cluster on that port (pg_ctlcluster), creating one with pg_createcluster if there
# is none; the role (LOGIN, the URL's password) and the database (owned by the role) are
# created as the postgres OS user. Idempotent: with everything in place it only checks.
# The server is left running. Exit status non-zero with the reason when it cannot.
set -euo pipefail
url=${1:-${DATABASE_URL:-postgres://netwatch:netwatch@127.0.0.1:5432/netwatch?sslmode=disable}}
log() { printf 'pg: %s\n' "$*" >&2; }
die() { printf 'pg: error: %s\n' "$*" >&2; exit 1; }

# postgres[ql]://user[:password]@host[:port]/dbname[?params]
re='^postgres(ql)?://([^:@/]+)(:([^@]*))?@([^:/?]+|\[[^]]+\])(:([0-9]+))?/([^?]+)(\?.*)?$'
[[ $url =~ $re ]] || die "cannot parse database URL (want postgres://user:password@host:port/db): $url"
user=${BASH_REMATCH[2]} pass=${BASH_REMATCH[4]} host=${BASH_REMATCH[5]}
port=${BASH_REMATCH[7]:-5432} db=${BASH_REMATCH[8]}
redacted=${url/:$pass@/:***@}

for c in psql pg_isready; do
  command -v $c >/dev/null || die "$c not found: run scripts/setup.sh (Debian package postgresql)"
done

local_host=false
case $host in 127.0.0.1|localhost|::1|'[::1]') local_host=true ;; esac

ready() { pg_isready -q -h "$host" -p "$port" -t 2 >/dev/null 2>&1; }
works() { PGCONNECT_TIMEOUT=5 psql "$url" -XAtqc 'select 1' >/dev/null 2>&1; }

if works; then
  log "PostgreSQL ready at $redacted"
  exit 0
fi

as_postgres() { # runs a command as the postgres OS user
  if [ "$(id -un)" = postgres ]; then "$@"
  elif [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"
  elif command -v sudo >/dev/null; then sudo -n -u postgres "$@"
  else return 1; fi
}
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"
  else return 1; fi
}

if ! ready; then
  $local_host || die "nothing answers at $host:$port and it is not a local address; start PostgreSQL there or set DATABASE_URL"
  command -v pg_lsclusters >/dev/null || die "pg_lsclusters not found: run scripts/setup.sh (Debian package postgresql)"
  # The Debian cluster on this port, else a new one.
  read -r ver name status < <(pg_lsclusters -h | awk -v p="$port" '$3 == p {print $1, $2, $4; exit}') || true
  if [ -z "${ver:-}" ]; then
    ver=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)
    [ -n "$ver" ] || die "no PostgreSQL server installed (/usr/lib/postgresql is empty): run scripts/setup.sh"
    name=main
    pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$ver main" && name=netwatch$port
    log "creating PostgreSQL $ver cluster '$name' on port $port"
    as_root pg_createcluster "$ver" "$name" --port "$port" >/dev/null || die "pg_createcluster $ver $name failed"
  fi
  log "starting PostgreSQL cluster $ver/$name (port $port)"
  out=$(as_root pg_ctlcluster "$ver" "$name" start 2>&1) || {
    # A stale pid file or a cluster that is up but does not listen on TCP: say so.
    printf '%s\n' "$out" >&2
    tail -n 20 "/var/log/postgresql/postgresql-$ver-$name.log" >&2 2>/dev/null || true
    die "pg_ctlcluster $ver $name start failed"
  }
  for _ in $(seq 1 100); do ready && break; sleep 0.2; done
  ready || die "PostgreSQL $ver/$name started but does not answer on $host:$port within 20 s"
fi

# The server answers: create the role and the database as the superuser, if we can.
sqlq() { printf "'%s'" "${1//\'/\'\'}"; }    # SQL string literal
sqli() { printf '"%s"' "${1//\"/\"\"}"; }    # SQL identifier
su_psql() { as_postgres psql -XAtq -p "$port" -d postgres "$@"; }
if $local_host && su_psql -c 'select 1' >/dev/null 2>&1; then
  if [ "$(su_psql -c "select 1 from pg_roles where rolname = $(sqlq "$user")")" != 1 ]; then
    log "creating role $user"
    su_psql -c "CREATE ROLE $(sqli "$user") LOGIN PASSWORD $(sqlq "$pass")" >/dev/null
  fi
  if ! works; then # wrong password, or no LOGIN: make the role match the URL
    su_psql -c "ALTER ROLE $(sqli "$user") LOGIN PASSWORD $(sqlq "$pass")" >/dev/null
  fi
  if [ "$(su_psql -c "select 1 from pg_database where datname = $(sqlq "$db")")" != 1 ]; then
    log "creating database $db (owner $user)"
    su_psql -c "CREATE DATABASE $(sqli "$db") OWNER $(sqli "$user")" >/dev/null
  fi
else
  # A remote server (or no superuser access): create the database with the URL's role.
  adm=${url/\/$db/\/postgres}
  if ! PGCONNECT_TIMEOUT=5 psql "$url" -XAtqc 'select 1' >/dev/null 2>&1; then
    log "creating database $db as $user"
    PGCONNECT_TIMEOUT=5 psql "$adm" -XAtqc "CREATE DATABASE $(sqli "$db")" >/dev/null ||
      die "database $db does not exist at $host:$port and $user cannot create it"
  fi
fi
works || die "PostgreSQL answers at $host:$port but $redacted does not accept a connection: $(PGCONNECT_TIMEOUT=5 psql "$url" -XAtqc 'select 1' 2>&1 | head -3)"
log "PostgreSQL ready at $redacted"
