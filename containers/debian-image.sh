# containers/debian-image.sh — sourced by build-target-image.sh and ee/build-base-image.sh:
# the cached build of an image from Debian packages (mmdebstrap into a rootfs tar, then
# `podman import`), kept while its `spindle.recipe` label matches the recipe hash.
#
# The caller sets SUITE VARIANT PACKAGES DPKG_EXCLUDES CUSTOMIZE (mmdebstrap's customize hook,
# run on the host with $1 = the new root; the variables it reads must be exported) and FORCE,
# and defines log and skip. Prints the image name; exits the caller's script when done.
debian_image() {  # IMAGE RECIPE CMD MESSAGE WORK_PREFIX
  local image=$1 recipe=$2 cmd=$3 message=$4 prefix=$5 have old_id mirror line start
  have=$(podman image inspect --format '{{index .Labels "spindle.recipe"}}' "$image" 2>/dev/null || true)
  old_id=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  if [[ $FORCE == 0 && $have == "$recipe" ]]; then
    log "$image is up to date (recipe $recipe)"
    echo "$image"
    exit 0
  fi
  command -v mmdebstrap >/dev/null || skip "mmdebstrap is not installed (scripts/setup.sh installs it)"
  if [[ -n ${SPINDLE_DEBIAN_MIRROR:-} ]]; then
    mirror=$SPINDLE_DEBIAN_MIRROR
  elif [[ -f /etc/apt/sources.list.d/debian.sources ]] && grep -q "^Suites:.*\b$SUITE\b" /etc/apt/sources.list.d/debian.sources; then
    mirror=/etc/apt/sources.list.d/debian.sources
  else
    mirror=http://deb.debian.org/debian
  fi
  # not under /tmp: the rootfs tar is ~200 MB
  work=$(mktemp -d "/var/tmp/$prefix.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "building $image (recipe $recipe, was '${have:-none}') from $mirror: mmdebstrap $SUITE $VARIANT +$PACKAGES"
  start=$SECONDS
  local dpkgopts=()
  while IFS= read -r line; do dpkgopts+=(--dpkgopt="$line"); done <<<"$DPKG_EXCLUDES"
  mmdebstrap --quiet --mode=root --variant="$VARIANT" \
    --include="$PACKAGES" "${dpkgopts[@]}" \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --customize-hook="$CUSTOMIZE" \
    "$SUITE" "$work/rootfs.tar" "$mirror" </dev/null >&2
  log "rootfs: $(du -h "$work/rootfs.tar" | cut -f1) in $((SECONDS - start))s; importing"
  podman import --quiet \
    --change "CMD $cmd" \
    --change "LABEL spindle.recipe=$recipe" \
    --message "$message, recipe $recipe" \
    "$work/rootfs.tar" "$image" >/dev/null
  if [[ -n $old_id ]]; then
    podman rmi "$old_id" >/dev/null 2>&1 || true  # the previous recipe's image, untagged now (kept if in use)
  fi
  log "built $image in $((SECONDS - start))s"
  echo "$image"
  exit 0
}
