#!/usr/bin/env bash
# containers/docker-cli.sh: the docker client alone (no daemon, nothing installed), for driving
# podman's docker-compatible API (`podman system service`) with community.docker.docker:
# extracts /usr/bin/docker from Debian's docker.io package (apt-get download) into
# /var/cache/spindle/docker-cli/ and prints that directory. Cached: a second run only prints it.
# Exit 77 means skip (no apt-get, not root, or the package cannot be fetched).
set -euo pipefail
DEST=/var/cache/spindle/docker-cli
if [[ -x $DEST/docker ]]; then echo "$DEST"; exit 0; fi
skip() { echo "docker-cli.sh: SKIP: $*" >&2; exit 77; }
[[ $(id -u) == 0 ]] || skip "needs root"
command -v apt-get >/dev/null || skip "no apt-get"
tmp=$(mktemp -d /var/tmp/spindle-docker-cli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q docker.io >&2 2>/dev/null) || skip "apt-get download docker.io failed"
dpkg-deb -x "$tmp"/docker.io_*.deb "$tmp/x"
mkdir -p "$DEST"
install -m 0755 "$tmp/x/usr/bin/docker" "$DEST/docker"
echo "docker-cli.sh: $("$DEST/docker" --version) in $DEST" >&2
echo "$DEST"
