#!/bin/sh
# Old-style module: the first argument is a file of key=value words (shell quoting).
. "$1"
printf '{"changed": true, "msg": "oldstyle color=%s size=%s"}\n' "$color" "$size"
