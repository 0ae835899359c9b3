#!/bin/sh
# Example `command` provider: called as revoke.sh SUBJECT TARGET SCOPE with the grant JSON on stdin.
# Must succeed when the privilege is already gone (revokes are retried until they succeed).
set -eu
mkdir -p data
printf '%s revoke %s %s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${JITBRIDGE_GRANT_ID:-?}" "$1" "$2" "$3" >> data/elevations.log
