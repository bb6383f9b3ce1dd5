#!/usr/bin/env bash
# containers/ee/build-ee.sh: spindle's execution environment image, built by ansible-builder 3
# from containers/ee/execution-environment.yml with podman, on the base image that
# build-base-image.sh makes from Debian packages (no container registry; PyPI for
# ansible-core, ansible-runner, dumb-init).
#
#   containers/ee/build-ee.sh [--image NAME] [--wheel PATH] [--force]
#
# Prints the image name on stdout (progress on stderr). The wheel is spindle-ansible's
# (default: the one in target/wheels/, which scripts/venv.sh builds). Cached: the image carries
# the label spindle.recipe=<hash of the EE definition, the entrypoint wrapper, the wheel's files and
# the base image's id>; nothing is built when it matches (podman's layer cache also keeps a
# rebuild for a new wheel to its last layers).
#
# The build containers see the host's /etc/ssl/certs/ca-certificates.crt and /etc/pip.conf
# (when they exist), so pip works where the way to PyPI needs the host's CAs.
# ansible-builder: $SPINDLE_VENV/bin/ansible-builder (scripts/venv.sh installs it), else PATH.
#
# Exit 77 means skip (not root, podman/mmdebstrap/ansible-builder missing).
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
ROOT=$(cd ../.. && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$ROOT/containers/containers.conf}

IMAGE=localhost/spindle-ee:latest
WHEEL=
FORCE=0
while (($#)); do
  case $1 in
    --image) IMAGE=$2; shift 2 ;;
    --wheel) WHEEL=$2; shift 2 ;;
    --force) FORCE=1; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build-ee.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

log() { echo "build-ee.sh: $*" >&2; }
skip() { log "SKIP: $*"; exit 77; }

[[ $(id -u) == 0 ]] || skip "needs root (rootful podman)"
command -v podman >/dev/null || skip "podman is not installed (scripts/setup.sh installs it)"
VENV=${SPINDLE_VENV:-$ROOT/.venv}
[[ $VENV == /* ]] || VENV=$ROOT/$VENV
if [[ -x $VENV/bin/ansible-builder ]]; then
  BUILDER=$VENV/bin/ansible-builder
elif command -v ansible-builder >/dev/null; then
  BUILDER=$(command -v ansible-builder)
else
  skip "ansible-builder is not installed (scripts/venv.sh installs it)"
fi
if [[ -z $WHEEL ]]; then
  wheels=("${CARGO_TARGET_DIR:-$ROOT/target}"/wheels/spindle_ansible-*.whl)
  [[ ${#wheels[@]} == 1 && -f ${wheels[0]} ]] || { log "no single spindle_ansible wheel in target/wheels (scripts/venv.sh builds it)"; exit 1; }
  WHEEL=${wheels[0]}
fi

# the wheel's files (names and bytes), not the zip, less RECORD (their hashes) and the SBOM
# (maturin stamps it): a rebuild of the same code gives the same hash
wheel_content_hash() {
  python3 -c 'import hashlib, sys, zipfile
h = hashlib.sha256()
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in sorted(z.namelist()):
        if n.endswith(".dist-info/RECORD") or ".dist-info/sboms/" in n:
            continue
        h.update(n.encode() + b"\0" + z.read(n))
print(h.hexdigest())' "$1"
}

rc=0
base=$(bash "$HERE/build-base-image.sh") || rc=$?
((rc == 0)) || exit "$rc"
base_id=$(podman image inspect --format '{{.Id}}' "$base")

RECIPE=$( { echo v1; cat "$HERE/execution-environment.yml" "$HERE/spindle-ee-env"; wheel_content_hash "$WHEEL"; echo "$base_id"; "$BUILDER" --version; } | sha256sum | cut -c1-16)
have=$(podman image inspect --format '{{index .Labels "spindle.recipe"}}' "$IMAGE" 2>/dev/null || true)
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
if [[ $FORCE == 0 && $have == "$RECIPE" ]]; then
  log "$IMAGE is up to date (recipe $RECIPE)"
  echo "$IMAGE"
  exit 0
fi

work=$(mktemp -d /var/tmp/spindle-ee.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/wheels"
cp "$HERE/execution-environment.yml" "$HERE/spindle-ee-env" "$work/"
cp "$WHEEL" "$work/wheels/"
extra="--label spindle.recipe=$RECIPE --label spindle.ee=1"
for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
  [[ -f $f ]] && extra+=" -v $f:$f:ro"
done
((FORCE)) && extra+=" --no-cache"
log "building $IMAGE (recipe $RECIPE, was '${have:-none}') with $("$BUILDER" --version | head -1) on $base, wheel $(basename "$WHEEL")"
start=$SECONDS
"$BUILDER" build --container-runtime podman -f "$work/execution-environment.yml" -c "$work/context" \
  -t "$IMAGE" --extra-build-cli-args="$extra" -v 2 </dev/null >&2
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [[ -n $old_id && $old_id != "$new_id" ]]; then
  podman rmi "$old_id" >/dev/null 2>&1 || true  # the previous build, untagged now (kept if in use)
fi
# the builder stages of earlier builds (untagged, labelled by this script; the current one
# stays for podman's layer cache)
podman images --filter dangling=true --filter label=spindle.ee=1 \
  --format '{{.ID}} {{index .Labels "spindle.recipe"}}' 2>/dev/null |
  while read -r id recipe; do
    [[ $recipe == "$RECIPE" ]] || podman rmi "$id" >/dev/null 2>&1 || true
  done
log "built $IMAGE in $((SECONDS - start))s"
echo "$IMAGE"
