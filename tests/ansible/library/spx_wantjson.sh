#!/bin/sh
# WANT_JSON module: the first argument is a file holding the arguments as JSON.
args=$(cat "$1")
perm=$(stat -c %a "$1")
printf '{"changed": false, "msg": "wantjson %s mode=%s"}\n' "$(printf '%s' "$args" | tr -dc 'a-z0-9' | cut -c1-60)" "$perm"
