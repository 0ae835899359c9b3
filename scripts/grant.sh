#!/bin/sh
# Example `command` provider: called as grant.sh SUBJECT TARGET SCOPE with the grant JSON on stdin.
# Replace with the call that adds SUBJECT to the local Administrators group on TARGET
# (e.g. through your endpoint-management tool). Exit 0 only when the privilege is in place.
set -eu
mkdir -p data
printf '%s grant %s %s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${JITBRIDGE_GRANT_ID:-?}" "$1" "$2" "$3" >> data/elevations.log
