#!/usr/bin/env bash
# containers/build-target-image.sh: the podman image of a spindle test target, built from Debian
# packages alone (no container registry): mmdebstrap makes a bookworm root filesystem with
# python3, openssh-server, sudo, procps and iproute2, and `podman import` turns it into an image.
#
#   containers/build-target-image.sh [--image NAME] [--force]
#
# Prints the image name on stdout (progress goes to stderr). Cached: the image carries the
# label spindle.recipe=<hash of the recipe below>; when an image of that name with that hash
# exists, nothing is built (well under a second). A from-scratch build takes about 1-2 minutes
# and ~230 MB of downloads from the Debian mirror (the host's apt sources when they name
# bookworm, else SPINDLE_DEBIAN_MIRROR, else deb.debian.org).
#
# What the image is: sshd in the foreground as its command (root login by key only; the key is
# not baked in: mount it at /root/.ssh/authorized_keys; the host key at
# /etc/ssh/ssh_host_ed25519_key, else each container makes its own), an
# unprivileged user `spindle` for become tests, python3 at /usr/bin/python3.
#
# Exit 77 means skip (not root, or podman/mmdebstrap missing): tests report it as a skip.
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/containers.conf}

IMAGE=localhost/spindle-target:latest
FORCE=0
while (($#)); do
  case $1 in
    --image) IMAGE=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build-target-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "build-target-image.sh: $*" >&2; }
skip() { log "SKIP: $*"; exit 77; }

[[ $(id -u) == 0 ]] || skip "needs root (mmdebstrap and rootful podman)"
command -v podman >/dev/null || skip "podman is not installed (scripts/setup.sh installs it)"

# ---- the recipe: everything that decides the image's content, hashed into its label ----
SUITE=bookworm
VARIANT=minbase
PACKAGES=python3,openssh-server,sudo,procps,iproute2
SSHD_CONF='HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
MaxStartups 1000:30:2000
MaxSessions 100
PrintMotd no
StrictModes no'
# the container's command. /run is a fresh tmpfs in a podman container: sshd's privilege
# separation directory is made there. The host key: the one mounted at
# /etc/ssh/ssh_host_ed25519_key (podman-fleet.sh gives a fleet one key, so known_hosts can be
# strict), else a fresh one (ed25519 only: an RSA key takes seconds on a loaded machine).
INIT='#!/bin/sh
set -e
mkdir -p /run/sshd
[ -e /etc/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -N "" -t ed25519 -f /etc/ssh/ssh_host_ed25519_key
exec /usr/sbin/sshd -D -e'
# run on the host with $1 = the new root filesystem
CUSTOMIZE='set -e
rm -f "$1"/etc/ssh/ssh_host_*_key*
mkdir -p "$1"/run/sshd "$1"/root/.ssh
chmod 0700 "$1"/root/.ssh
printf "%s\n" "$SPINDLE_SSHD_CONF" >"$1"/etc/ssh/sshd_config.d/spindle.conf
sed -i "s|^Subsystem[[:space:]].*|Subsystem sftp internal-sftp|" "$1"/etc/ssh/sshd_config
chroot "$1" useradd -m -s /bin/bash spindle
echo spindle-target >"$1"/etc/hostname
rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin
printf "%s\n" "$SPINDLE_INIT" >"$1"/usr/local/sbin/spindle-target-init
chmod 0755 "$1"/usr/local/sbin/spindle-target-init'
CMD='["/usr/local/sbin/spindle-target-init"]'
DPKG_EXCLUDES='path-exclude=/usr/share/man/*
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/info/*'
RECIPE=$(printf '%s\n--\n' "v1" "$SUITE" "$VARIANT" "$PACKAGES" "$SSHD_CONF" "$INIT" "$CUSTOMIZE" "$CMD" "$DPKG_EXCLUDES" | sha256sum | cut -c1-16)
# -----------------------------------------------------------------------------------------

export SPINDLE_SSHD_CONF=$SSHD_CONF SPINDLE_INIT=$INIT
# shellcheck source=debian-image.sh
. "$HERE/debian-image.sh"
debian_image "$IMAGE" "$RECIPE" "$CMD" "spindle test target" spindle-image
