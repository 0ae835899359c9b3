#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the PostgreSQL store tests and stops it on exit.
#
#   scripts/test-postgres.sh                  # start, print the URL, wait for Ctrl-C
#   scripts/test-postgres.sh -- cargo test    # start, run the command with
#                                             # JITBRIDGE_TEST_POSTGRES_URL set, stop
#
# The cluster lives in a fresh directory under /tmp (trust authentication on 127.0.0.1 only,
# fsync off: it is test data) and is deleted when the script exits. initdb refuses to run as
# root, so as root the server runs as the `postgres` user.
set -euo pipefail

bindir=""
for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && bindir="$d"
done
if [ -z "$bindir" ]; then
    bindir="$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"
fi
if [ ! -x "$bindir/initdb" ]; then
    echo "test-postgres: no PostgreSQL server binaries found (install the 'postgresql' package)" >&2
    exit 1
fi

run_as=()
if [ "$(id -u)" = 0 ]; then
    run_as=(runuser -u postgres --)
fi

datadir="$(mktemp -d /tmp/jitbridge-pg.XXXXXX)"
chmod 755 "$datadir"
[ "${#run_as[@]}" -gt 0 ] && chown postgres "$datadir"

port="${JITBRIDGE_PG_PORT:-}"
if [ -z "$port" ]; then
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 55432)"
fi

stop() {
    "${run_as[@]}" "$bindir/pg_ctl" -D "$datadir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$datadir"
}
trap stop EXIT INT TERM

"${run_as[@]}" "$bindir/initdb" -D "$datadir/data" -U jitbridge --auth=trust -E UTF8 \
    --no-sync >"$datadir/initdb.log" 2>&1 || { cat "$datadir/initdb.log" >&2; exit 1; }
"${run_as[@]}" "$bindir/pg_ctl" -D "$datadir/data" -l "$datadir/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $datadir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null || { cat "$datadir/server.log" >&2; exit 1; }
"$bindir/createdb" -h 127.0.0.1 -p "$port" -U jitbridge jitbridge_test

url="postgres://jitbridge@127.0.0.1:$port/jitbridge_test"
echo "JITBRIDGE_TEST_POSTGRES_URL=$url"

if [ "${1:-}" = "--" ]; then
    shift
    # In the background and waited for, so that a signal stops the command and the cluster at
    # once (bash defers traps while a foreground child runs).
    JITBRIDGE_TEST_POSTGRES_URL="$url" "$@" &
    child=$!
    trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' INT TERM
    rc=0
    wait "$child" || rc=$?
    exit "$rc"
else
    echo "PostgreSQL is running; press Ctrl-C to stop it and delete its data." >&2
    while true; do sleep 3600; done
fi
