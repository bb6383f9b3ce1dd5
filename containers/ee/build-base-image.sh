#!/usr/bin/env bash
# containers/ee/build-base-image.sh: the base image of spindle's execution environment, built
# from Debian packages alone (no container registry): mmdebstrap makes a bookworm root
# filesystem with what ansible-builder 3 needs of a base image (python3, pip, venv) and what an
# Ansible controller needs (openssh-client, ssh-agent, rsync, ca-certificates), and
# `podman import` turns it into an image.
#
#   containers/ee/build-base-image.sh [--image NAME] [--force]
#
# Prints the image name on stdout (progress on stderr). Cached like build-target-image.sh: the
# image carries the label spindle.recipe=<hash of the recipe below>, and nothing is built when
# an image of that name has that hash. From scratch: ~1-2 minutes, ~60 MB of downloads.
#
# ansible-builder's scripts drive a dnf-like package manager (`install -y PKGS`, `clean all`);
# the image has /usr/local/bin/ee-apt, which does that with apt-get, for the EE definition's
# `options.package_manager_path` (bindep's system packages then install from Debian).
#
# Exit 77 means skip (not root, or podman/mmdebstrap missing).
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(cd .. && pwd)/containers.conf}

IMAGE=localhost/spindle-ee-base:latest
FORCE=0
while (($#)); do
  case $1 in
    --image) IMAGE=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "build-base-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "build-base-image.sh: $*" >&2; }
skip() { log "SKIP: $*"; exit 77; }

[[ $(id -u) == 0 ]] || skip "needs root (mmdebstrap and rootful podman)"
command -v podman >/dev/null || skip "podman is not installed (scripts/setup.sh installs it)"

# ---- the recipe: everything that decides the image's content, hashed into its label ----
SUITE=bookworm
VARIANT=minbase
PACKAGES=python3,python3-pip,python3-venv,openssh-client,rsync,ca-certificates,bash
EE_APT='#!/bin/sh
# ee-apt: a dnf-like front of apt-get for ansible-builder'"'"'s scripts (assemble,
# install-from-bindep): "install -y [OPTS] PKGS" and "clean all".
set -e
cmd=$1; shift
case $cmd in
  install)
    pkgs=
    for a in "$@"; do case $a in -*) ;; *) pkgs="$pkgs $a" ;; esac; done
    [ -n "$pkgs" ] || exit 0
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs ;;
  clean)
    apt-get clean
    rm -rf /var/lib/apt/lists/* ;;
  *) exec apt-get "$cmd" "$@" ;;
esac'
# run on the host with $1 = the new root filesystem
CUSTOMIZE='set -e
rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin
printf "%s\n" "$SPINDLE_EE_APT" >"$1"/usr/local/bin/ee-apt
chmod 0755 "$1"/usr/local/bin/ee-apt'
DPKG_EXCLUDES='path-exclude=/usr/share/man/*
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/info/*'
RECIPE=$(printf '%s\n--\n' "v1" "$SUITE" "$VARIANT" "$PACKAGES" "$EE_APT" "$CUSTOMIZE" "$DPKG_EXCLUDES" | sha256sum | cut -c1-16)
# -----------------------------------------------------------------------------------------

export SPINDLE_EE_APT=$EE_APT
# shellcheck source=../debian-image.sh
. "$HERE/../debian-image.sh"
debian_image "$IMAGE" "$RECIPE" '["/bin/bash"]' "spindle execution environment base" spindle-ee-base
