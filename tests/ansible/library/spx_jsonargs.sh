#!/bin/sh
# JSON_ARGS module: Ansible puts the arguments (JSON) in place of the marker.
args='<<INCLUDE_ANSIBLE_MODULE_JSON_ARGS>>'
printf '{"changed": false, "msg": "jsonargs %s"}\n' "$(printf '%s' "$args" | tr -dc 'a-z0-9' | cut -c1-60)"
