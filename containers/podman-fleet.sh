#!/usr/bin/env bash
# containers/podman-fleet.sh: N real podman containers as spindle test targets, each running its
# own sshd with its own address on podman's bridge network, reachable two ways: over ssh
# (root by key, inventory.ini) and with `podman exec` (ansible_connection=containers.podman.podman,
# inventory-podman.ini).
#
#   containers/podman-fleet.sh up NAME COUNT [--dir DIR] [--image IMAGE] [--timeout S] [--jobs J] [--tmpfs] [--keep-on-failure]
#   containers/podman-fleet.sh down NAME [--dir DIR]     # idempotent
#   containers/podman-fleet.sh status [NAME]             # no NAME: list fleets; exit 1 if a container is down
#
# `up` builds the image first when it is missing or stale (containers/build-target-image.sh:
# cached by a recipe label, 1-2 minutes from scratch), starts the containers J at a time
# (default 8) and waits until every sshd answers (--timeout, default 60 s). It prints progress on
# stderr and only the ssh inventory's path on stdout (`inv=$(containers/podman-fleet.sh up p1 5)`).
# An existing fleet of the same NAME is taken down first; a failed `up` cleans up after itself
# unless --keep-on-failure. Exit 77 means skip (not root, no podman, the image cannot be built).
# --tmpfs gives every container private tmpfs mounts at /tmp, /var/tmp and /root (as the netns
# fleet's targets have): bench/run counts the files a run creates there by tmpfs inode numbers.
#
# NAME matches [a-z0-9]{1,5}. Container i is `spc-NAME-i` (also its hostname), labelled
# spindle.fleet=NAME; `down` removes exactly the containers with that label.
# Podman runs with CONTAINERS_CONF=containers/containers.conf (runc, no default ulimits), unless
# CONTAINERS_CONF is already set: use the same for your own podman commands on the fleet.
#
# Files in DIR (default /run/spindle-podman/NAME):
#   inventory.ini         group `fleet`, hosts t0.. over ssh (ansible_host=IP, key, strict known_hosts)
#   inventory-podman.ini  group `fleet`, hosts t0.. with ansible_host=spc-NAME-i and
#                         ansible_connection=containers.podman.podman
#   names.txt, hosts.txt  container names / IPs, one per line in index order
#   id_ed25519            the client key (its .pub is every container's authorized_keys)
#   ssh_host_ed25519_key  the fleet's one host key (mounted into every container)
#   known_hosts           that key listed for every container IP
#   ssh_config            `ssh -F DIR/ssh_config t3`
#   fleet.env             NAME DIR COUNT IMAGE TMPFS (shell-sourceable)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/containers.conf}
BASE=/run/spindle-podman
MARKER=.spindle-podman-fleet

log() { echo "podman-fleet.sh: $*" >&2; }
die() { log "$*"; exit 1; }
skip() { log "SKIP: $*"; exit 77; }
usage() { sed -n '7,10p' "$0" >&2; exit 2; }

(($#)) || usage
CMD=$1; shift
NAME=${1:-}
[[ $CMD == status && -z $NAME ]] || { [[ $NAME =~ ^[a-z0-9]{1,5}$ ]] || { log "NAME must match [a-z0-9]{1,5}"; usage; }; shift; }
COUNT=
if [[ $CMD == up ]]; then
  COUNT=${1:-}; [[ $COUNT =~ ^[0-9]+$ && $COUNT -ge 1 && $COUNT -le 2000 ]] || { log "COUNT must be 1..2000"; usage; }
  shift
fi
DIR= IMAGE=localhost/spindle-target:latest TIMEOUT=60 JOBS=8 KEEP=0 TMPFS=0
while (($#)); do
  case $1 in
    --dir) DIR=$2; shift 2 ;;
    --image) IMAGE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --keep-on-failure) KEEP=1; shift ;;
    --tmpfs) TMPFS=1; shift ;;
    *) log "unknown argument $1"; usage ;;
  esac
done

[[ $(id -u) == 0 ]] || skip "needs root (rootful podman: bridge addresses reachable from the host)"
command -v podman >/dev/null || skip "podman is not installed (scripts/setup.sh installs it)"

state_file() { echo "$BASE/.state/$1.env"; }

fleet_dir() {  # DIR of fleet $1: --dir, else its state file, else the default
  if [[ -n $DIR ]]; then echo "$DIR"
  elif [[ -f $(state_file "$1") ]]; then (. "$(state_file "$1")"; echo "$DIR")
  else echo "$BASE/$1"; fi
}

down() {
  local name=$1 dir ids
  dir=$(fleet_dir "$name")
  ids=$(podman ps -aq --filter "label=spindle.fleet=$name" 2>/dev/null || true)
  if [[ -n $ids ]]; then
    # -t 0: sshd as pid 1 would have 10 s to stop on SIGTERM; nothing in it needs to flush
    # shellcheck disable=SC2086
    podman rm -f -t 0 $ids >/dev/null 2>&1 || podman rm -f -t 0 $ids >/dev/null
  fi
  if [[ -f $dir/$MARKER ]]; then rm -rf "$dir"; fi
  rm -f "$(state_file "$name")"
}

status() {
  local name=$1 want running
  [[ -f $(state_file "$name") ]] || { log "no fleet $name"; return 1; }
  want=$(. "$(state_file "$name")"; echo "$COUNT")
  running=$(podman ps -q --filter "label=spindle.fleet=$name" --filter status=running | wc -l)
  echo "$name: $running of $want running"
  [[ $running == "$want" ]]
}

wait_ssh() {  # wait until every IP in $1 accepts TCP on port 22, up to $2 seconds
  python3 - "$1" "$2" <<'PY'
import socket, sys, time
ips = [l.strip() for l in open(sys.argv[1]) if l.strip()]
deadline = time.monotonic() + float(sys.argv[2])
left = set(ips)
while left and time.monotonic() < deadline:
    for ip in sorted(left):
        try:
            socket.create_connection((ip, 22), timeout=1).close()
            left.discard(ip)
        except OSError:
            pass
    if left:
        time.sleep(0.2)
if left:
    sys.exit('sshd not answering on %d of %d containers: %s' % (len(left), len(ips), ' '.join(sorted(left)[:10])))
PY
}

up() {
  local name=$1 count=$2 dir start i
  down "$name"
  dir=$(fleet_dir "$name")
  [[ -n $DIR ]] || dir=$BASE/$name
  start=$SECONDS
  IMAGE=$("$HERE/build-target-image.sh" --image "$IMAGE") || {
    rc=$?; [[ $rc == 77 ]] && exit 77; die "building the image failed ($rc)"; }
  mkdir -p "$dir" "$BASE/.state"
  chmod 0700 "$dir"
  touch "$dir/$MARKER"
  printf 'NAME=%q\nDIR=%q\nCOUNT=%q\nIMAGE=%q\nTMPFS=%q\n' "$name" "$dir" "$count" "$IMAGE" "$TMPFS" | tee "$dir/fleet.env" >"$(state_file "$name")"
  ssh-keygen -q -t ed25519 -N '' -C "spindle-podman-$name" -f "$dir/id_ed25519"
  ssh-keygen -q -t ed25519 -N '' -C "spindle-podman-$name-host" -f "$dir/ssh_host_ed25519_key"
  log "starting $count containers spc-$name-0.. from $IMAGE ($JOBS at a time)"
  # shellcheck disable=SC2016
  # --tmpfs: exec allowed (as the netns targets' tmpfs); /root 0700, its .ssh made by the runtime
  # under the key's bind mount
  seq 0 $((count - 1)) | xargs -P "$JOBS" -I{} sh -c '
    n=spc-$0-{}
    t=
    [ "$3" = 1 ] && t="--tmpfs /tmp:rw,exec,mode=1777 --tmpfs /var/tmp:rw,exec,mode=1777 --tmpfs /root:rw,exec,mode=0700"
    podman run -d --name "$n" --hostname "$n" --label spindle.fleet=$0 $t \
      -v "$1/id_ed25519.pub:/root/.ssh/authorized_keys:ro" \
      -v "$1/ssh_host_ed25519_key:/etc/ssh/ssh_host_ed25519_key:ro" \
      "$2" >/dev/null || { echo "podman run $n failed" >&2; exit 255; }' "$name" "$dir" "$IMAGE" "$TMPFS" \
    || return 1
  : >"$dir/names.txt"; : >"$dir/hosts.txt"
  for ((i = 0; i < count; i++)); do echo "spc-$name-$i" >>"$dir/names.txt"; done
  # one inspect for all: name -> address
  podman inspect --format '{{.Name}} {{.NetworkSettings.IPAddress}}' $(cat "$dir/names.txt") >"$dir/addresses"
  for ((i = 0; i < count; i++)); do
    ip=$(awk -v n="spc-$name-$i" '$1 == n {print $2}' "$dir/addresses")
    [[ -n $ip ]] || { log "spc-$name-$i has no address"; return 1; }
    echo "$ip" >>"$dir/hosts.txt"
  done
  rm -f "$dir/addresses"
  local hostkey; hostkey=$(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")
  awk -v k="$hostkey" '{print $1, k}' "$dir/hosts.txt" >"$dir/known_hosts"
  {
    echo "[fleet]"
    for ((i = 0; i < count; i++)); do echo "t$i ansible_host=$(sed -n "$((i + 1))p" "$dir/hosts.txt") ansible_user=root"; done
    echo
    echo "[fleet:vars]"
    echo "ansible_ssh_private_key_file=$dir/id_ed25519"
    echo "ansible_ssh_common_args='-o UserKnownHostsFile=$dir/known_hosts -o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null'"
    echo "ansible_python_interpreter=/usr/bin/python3"
  } >"$dir/inventory.ini"
  {
    echo "[fleet]"
    for ((i = 0; i < count; i++)); do echo "t$i ansible_host=spc-$name-$i"; done
    echo
    echo "[fleet:vars]"
    echo "ansible_connection=containers.podman.podman"
    echo "ansible_python_interpreter=/usr/bin/python3"
  } >"$dir/inventory-podman.ini"
  {
    for ((i = 0; i < count; i++)); do
      printf 'Host t%d\n  HostName %s\n' "$i" "$(sed -n "$((i + 1))p" "$dir/hosts.txt")"
    done
    printf 'Host *\n  User root\n  IdentityFile %s/id_ed25519\n  UserKnownHostsFile %s/known_hosts\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  BatchMode yes\n' "$dir" "$dir"
  } >"$dir/ssh_config"
  log "containers started in $((SECONDS - start))s; waiting for sshd"
  wait_ssh "$dir/hosts.txt" "$TIMEOUT" || return 1
  log "fleet $name: $count containers up in $((SECONDS - start))s ($dir)"
  echo "$dir/inventory.ini"
}

case $CMD in
  up)
    if ! up "$NAME" "$COUNT"; then
      if ((KEEP)); then log "up failed; kept (--keep-on-failure)"; else log "up failed; cleaning up"; down "$NAME"; fi
      exit 1
    fi ;;
  down) down "$NAME" ;;
  status)
    if [[ -n $NAME ]]; then status "$NAME"
    else
      rc=0
      for f in "$BASE"/.state/*.env; do [[ -e $f ]] || continue; n=$(basename "$f" .env); status "$n" || rc=1; done
      exit $rc
    fi ;;
  *) usage ;;
esac
