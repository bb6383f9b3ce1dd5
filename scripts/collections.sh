#!/usr/bin/env bash
# scripts/collections.sh — the third-party Ansible collections whose connection plugins the
# tests compare spindle with: community.general (chroot, lxd, lxc, jail, incus),
# community.docker (docker, nsenter), kubernetes.core (kubectl), containers.podman (podman,
# buildah). ansible-core ships none of them, and galaxy is out of reach on CI; PyPI's
# `ansible` package bundles them, so this downloads that wheel (the release built for the
# venv's ansible-core: 2.19 -> ansible 12, 2.18 -> 11, 2.20 -> 13, ...) and unpacks only these
# four collections into $VENV/collections. Operators do not need any of this: spindle routes
# these connection names whether or not the collection is installed.
#
# Idempotent: a marker names the unpacked release; pip's cache keeps the 54 MB wheel.
#   SPINDLE_VENV=dir   the venv (default .venv), made by scripts/venv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SPINDLE_VENV:-.venv}
VENV=$(cd "$VENV" && pwd)
DEST=$VENV/collections
COLLECTIONS="community/general community/docker kubernetes/core containers/podman"

core=$("$VENV/bin/python" -c 'from ansible.release import __version__ as v; print(".".join(v.split(".")[:2]))')
major=$(( ${core#2.} - 7 ))   # ansible 12 bundles ansible-core 2.19
marker=$DEST/.spindle-collections
if [[ -f $marker && $(cat "$marker") == "ansible-$major $COLLECTIONS" ]]; then
  exit 0
fi
echo "collections.sh: fetching the collections of ansible $major.x (for ansible-core $core)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$VENV/bin/pip" download -q --no-deps -d "$tmp" "ansible>=$major,<$((major + 1))"
rm -rf "$DEST"
mkdir -p "$DEST"
"$VENV/bin/python" - "$tmp"/ansible-*.whl "$DEST" $COLLECTIONS <<'PY'
import sys, zipfile
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
prefixes = tuple('ansible_collections/%s/' % n for n in names)
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith(prefixes)]
    z.extractall(dest, members)
print('collections.sh: %d files of %s into %s' % (len(members), ', '.join(names), dest))
PY
echo "ansible-$major $COLLECTIONS" >"$marker"
