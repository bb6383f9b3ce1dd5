#!/usr/bin/env bash
# shellcheck disable=SC2174,SC2034  # mkdir -p -m: only the leaf's mode matters; UP_OK is read by a trap
# containers/netns-fleet.sh — a fleet of ssh targets made of Linux network namespaces.
#
#   netns-fleet.sh up NAME COUNT [--dir DIR] [--net N] [--timeout SECS] [--shared-fs] [--keep-on-failure]
#   netns-fleet.sh down NAME [--dir DIR]
#   netns-fleet.sh status [NAME]
#   netns-fleet.sh kill-sshd NAME INDEX      # SIGKILL the target's listener and every process in it
#   netns-fleet.sh start-sshd NAME INDEX     # bring a killed target back (fresh private /tmp, /root)
#   netns-fleet.sh exec NAME INDEX CMD...    # run CMD inside target INDEX (its net, mount, uts ns)
#
# Each target i is a network namespace sp-NAME-i joined to the host by a veth pair
# (host spNAMEh<i>, target spNAMEt<i>) on its own /30, running its own sshd as root.
# Targets share the host's filesystem and PID space, except that each gets private tmpfs
# mounts on /tmp, /var/tmp and /root (unless --shared-fs; root's pyenv versions, when there,
# stay visible read-only in the private /root), so what a test writes on a
# target stays on that target and disappears with it.
#
# Addressing: fleet NAME uses 10.S.0.0/16 with S = 100 + N, N in 0..127 (--net N, default
# a hash of NAME; when that /16 is taken by another fleet or by any address or route on the
# host, the next free N is used, under a lock, so parallel fleets never collide; an
# explicit --net that is taken is an error). Target i: block 10.S.(i/64).((i%64)*4)/30,
# host side .1, target .2. At most 16384 targets per fleet.
#
# Fleet files (DIR, default /run/spindle-fleet/NAME): id_ed25519 (client key),
# ssh_host_ed25519_key, authorized_keys, sshd_config, known_hosts, hosts.txt,
# inventory.ini (Ansible), ssh_config (for `ssh -F`, aliases t0..), fleet.env, sshd-<i>.pid,
# sshd-<i>.log. `up` prints progress on stderr and the inventory path alone on stdout.
#
# Exit codes: 0 ok; 1 error; 2 usage; 77 cannot run here (not root, no usable `ip netns`
# or veth, sshd or python3 missing) — tests treat 77 as "skip".
set -euo pipefail
umask 022

ROOT=/run/spindle-fleet
STATE_DIR=$ROOT/.state
SSHD=/usr/sbin/sshd
PY=/usr/bin/python3
NET_BASE=100      # second octet = NET_BASE + N
NET_SLOTS=128     # N in 0..127 -> 10.100.0.0/16 .. 10.227.0.0/16
MAX_TARGETS=16384 # /30 blocks in a /16
PARALLEL=${SPINDLE_FLEET_PARALLEL:-12}   # concurrent target launches

PROG=netns-fleet
KILLED=()         # pids this run has SIGKILLed
log() { echo "$PROG: $*" >&2; }
die() { echo "$PROG: error: $*" >&2; exit 1; }
skip() { echo "$PROG: SKIP: $*" >&2; exit 77; }
usage() {
  sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- arguments

CMD=${1:-}; [[ -n $CMD ]] || usage; shift
NAME="" COUNT="" INDEX="" OPT_DIR="" OPT_NET="" TIMEOUT="" SHARED_FS=0 KEEP=0
POS=()
while (($#)); do
  case $1 in
    --dir) OPT_DIR=${2:?--dir needs a value}; shift 2 ;;
    --dir=*) OPT_DIR=${1#*=}; shift ;;
    --net) OPT_NET=${2:?--net needs a value}; shift 2 ;;
    --net=*) OPT_NET=${1#*=}; shift ;;
    --timeout) TIMEOUT=${2:?--timeout needs a value}; shift 2 ;;
    --timeout=*) TIMEOUT=${1#*=}; shift ;;
    --shared-fs) SHARED_FS=1; shift ;;
    --keep-on-failure) KEEP=1; shift ;;
    -h|--help) usage ;;
    --) shift; POS+=("$@"); break ;;
    *)
      POS+=("$1"); shift
      # for `exec`, everything after NAME INDEX is the command, untouched
      if [[ $CMD == exec && ${#POS[@]} -eq 2 ]]; then
        [[ ${1:-} == -- ]] && shift
        POS+=("$@"); break
      fi ;;
  esac
done

check_name() {
  [[ $1 =~ ^[a-z0-9]{1,5}$ ]] || die "NAME must match [a-z0-9]{1,5} (got '$1')"
}
check_index() {
  [[ $1 =~ ^[0-9]+$ ]] && (( 10#$1 < MAX_TARGETS )) || die "bad INDEX '$1'"
}

# ---------------------------------------------------------------- helpers

require_root() {
  [[ $(id -u) == 0 ]] || skip "must run as root (needs ip netns, veth, sshd as root)"
}

# Can this machine make namespaces and veths, and run sshd? Exit 77 if not.
preflight() {
  require_root
  local c
  for c in ip ssh-keygen unshare nsenter flock mount umount find awk stat timeout; do
    command -v "$c" >/dev/null 2>&1 || skip "'$c' not found (run scripts/setup.sh)"
  done
  [[ -x $SSHD ]] || skip "$SSHD not found (run scripts/setup.sh to install openssh-server)"
  [[ -x $PY ]] || skip "$PY not found (run scripts/setup.sh to install python3)"
  local probe=sp-probe-$$ err
  if ! err=$(ip netns add "$probe" 2>&1); then
    skip "ip netns is not usable here: $err"
  fi
  if ! err=$(ip -n "$probe" link add "spprb$$a" type veth peer name "spprb$$b" 2>&1); then
    ip netns del "$probe" 2>/dev/null || true
    skip "veth interfaces are not usable here: $err"
  fi
  ip netns del "$probe" 2>/dev/null || true
}

set_fleet_vars() {  # NAME DIR NET -> derived names
  FLEET_DIR=$2
  NET=$3
  OCT=$((NET_BASE + NET))
  SUBNET=10.$OCT.0.0/16
  CONFIG=$FLEET_DIR/sshd_config
}
# set TIP (target) and HIP (host side) for target i, without a subshell
ips_of() {
  local b=$((($1 % 64) * 4))
  HIP=10.$OCT.$(($1 / 64)).$((b + 1)) TIP=10.$OCT.$(($1 / 64)).$((b + 2))
}
target_ip() {  # i host|target
  local i=$1 off=2; [[ $2 == host ]] && off=1
  echo "10.$OCT.$((i / 64)).$(((i % 64) * 4 + off))"
}

state_file() { echo "$STATE_DIR/$1.env"; }

# Load DIR (and NET, COUNT) of fleet NAME from its state file; fall back to --dir/default.
load_state() {
  local name=$1 sf; sf=$(state_file "$name")
  ST_DIR="" ST_NET="" ST_COUNT=""
  if [[ -f $sf ]]; then
    ST_DIR=$(sed -n 's/^DIR=//p' "$sf")
    ST_NET=$(sed -n 's/^NET=//p' "$sf")
    ST_COUNT=$(sed -n 's/^COUNT=//p' "$sf")
  fi
}

lock_name() {  # hold a per-NAME lock for the rest of this process
  mkdir -p "$ROOT/.locks"
  exec {NAME_LOCK_FD}>"$ROOT/.locks/$1"
  flock "$NAME_LOCK_FD"
}

# every existing namespace of the fleet
fleet_namespaces() {  # NAME
  ip netns list 2>/dev/null | awk -v re="^sp-$1-[0-9]+\$" '$1 ~ re { print $1 }'
}

# host-side veths of the fleet
fleet_host_links() {  # NAME
  ip -o link show 2>/dev/null |
    awk -F': ' -v re="^sp$1h[0-9]+\$" '{ split($2, a, "@"); if (a[1] ~ re) print a[1] }'
}

# pids of every process whose network namespace is one of the given /run/netns names
pids_in_netns() {
  (($#)) || return 0
  local files=() ns
  for ns; do [[ -e /run/netns/$ns ]] && files+=("/run/netns/$ns"); done
  ((${#files[@]})) || return 0
  {
    stat -L -c 'NS %i' "${files[@]}" 2>/dev/null || true
    # processes come and go while we look: missing entries are fine
    find /proc/[0-9]*/ns/net -maxdepth 0 -printf '%h %l\n' 2>/dev/null || true
  } | awk -v self=$$ -v bp="$BASHPID" '
      $1 == "NS" { want["net:[" $2 "]"] = 1; next }
      ($2 in want) { split($1, p, "/"); if (p[3] != self && p[3] != bp) print p[3] }'
}

# SIGKILL every process in the given namespaces until none is left
kill_netns_procs() {
  local try pids
  for ((try = 0; try < 100; try++)); do
    pids=$(pids_in_netns "$@")
    [[ -z $pids ]] && return 0
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    # shellcheck disable=SC2206  # pids are digits, one per line
    KILLED+=($pids)
    sleep 0.05
  done
  log "warning: processes still alive in namespaces: $(pids_in_netns "$@" | tr '\n' ' ')"
}

# pid from a target's pidfile if that process is really this fleet's sshd
sshd_pid() {  # i
  local pf=$FLEET_DIR/sshd-$1.pid pid
  [[ -f $pf ]] || return 1
  pid=$(<"$pf")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  local args=()
  { mapfile -d '' args <"/proc/$pid/cmdline"; } 2>/dev/null || return 1
  # argv, or (once sshd has set its process title) "sshd: /usr/sbin/sshd -f CONFIG ..."
  [[ " ${args[*]-} " == *" -f $CONFIG "* ]] || return 1
  echo "$pid"
}

# Start target i's sshd inside its namespace (namespace and veth already exist).
# Runs in: ip netns exec (own mount ns) -> unshare --uts -> sh -> exec sshd (daemonizes).
LAUNCHER='
set -e
i=$1 tip=$2 dev=$3 hn=$4 dir=$5 private=$6 sshd=$7
printf "link set lo up\naddr replace %s/30 dev %s\nlink set %s up\n" "$tip" "$dev" "$dev" | ip -batch -
echo "$hn" > /proc/sys/kernel/hostname
# the target need not see (nor keep propagating) every other namespace mount
umount -l /run/netns 2>/dev/null || true
if [ "$private" = 1 ]; then
  mount -t tmpfs -o mode=1777,size=256m spindle-tmp /tmp
  mount -t tmpfs -o mode=1777,size=256m spindle-tmp /var/tmp
  # Interpreters installed in the home of root (pyenv versions) stay visible, read-only, in the
  # private one: targets can run the oldest and newest Python (tests/ansible/run_matrix.py).
  pyenv=""
  if [ -d /root/.pyenv/versions ] && mkdir -p /tmp/.spindle-pyenv &&
     mount --bind /root/.pyenv/versions /tmp/.spindle-pyenv; then
    pyenv=1
  fi
  mount -t tmpfs -o mode=0700,size=256m spindle-home /root
  if [ -n "$pyenv" ]; then
    mkdir -p /root/.pyenv/versions
    mount --bind /tmp/.spindle-pyenv /root/.pyenv/versions
    mount -o remount,bind,ro /root/.pyenv/versions || true
    umount /tmp/.spindle-pyenv && rmdir /tmp/.spindle-pyenv
  fi
fi
exec "$sshd" -f "$dir/sshd_config" -o "ListenAddress=$tip" -o "PidFile=$dir/sshd-$i.pid" -E "$dir/sshd-$i.log"
'
launch_target() {  # i
  local i=$1 private=1
  ((SHARED_FS)) && private=0
  rm -f "$FLEET_DIR/sshd-$i.pid"
  ips_of "$i"
  ip netns exec "sp-$NAME-$i" unshare --uts -- /bin/sh -c "$LAUNCHER" sh \
    "$i" "$TIP" "sp${NAME}t$i" "sp-$NAME-$i" "$FLEET_DIR" "$private" "$SSHD" \
    </dev/null >>"$FLEET_DIR/sshd-$i.log" 2>&1
}

# Wait until every listed target answers with an SSH banner on port 22.
# Prints the indexes that never did; exit status 1 if any.
PROBE_PY='
import resource, selectors, socket, sys, time
timeout = float(sys.argv[1]); ips = sys.argv[2:]
try:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
except Exception:
    pass
deadline = time.monotonic() + timeout
pending = list(range(len(ips)))
CHUNK = 400
while pending and time.monotonic() < deadline:
    left = []
    for c in range(0, len(pending), CHUNK):
        chunk = pending[c:c + CHUNK]
        sel = selectors.DefaultSelector()
        for i in chunk:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((ips[i], 22))
            sel.register(s, selectors.EVENT_READ, i)
        ok = set()
        end = min(deadline, time.monotonic() + 2.0)
        while sel.get_map() and time.monotonic() < end:
            for key, _ in sel.select(max(0.0, end - time.monotonic())):
                try:
                    data = key.fileobj.recv(64)
                except OSError:
                    data = b""
                if data[:4] == b"SSH-":
                    ok.add(key.data)
                    try:  # answer with a banner so sshd does not log a kex error
                        key.fileobj.send(b"SSH-2.0-spindle-fleet-probe\r\n")
                    except OSError:
                        pass
                sel.unregister(key.fileobj)
                key.fileobj.close()
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()
        left += [i for i in chunk if i not in ok]
    pending = left
    if pending:
        time.sleep(0.1)
for i in pending:
    print(i)
sys.exit(1 if pending else 0)
'
probe_targets() {  # timeout idx...
  local t=$1; shift
  local ips=() i
  for i; do ips_of "$i"; ips+=("$TIP"); done
  local bad
  bad=$("$PY" -I -c "$PROBE_PY" "$t" "${ips[@]}") && return 0
  local map=() n=0
  for i; do map[n++]=$i; done
  for i in $bad; do echo "${map[i]}"; done
  return 1
}

raise_sysctl() {  # key minimum — only ever raises
  local key=$1 want=$2 f=/proc/sys/${1//.//} cur
  [[ -w $f ]] || return 0
  cur=$(<"$f")
  if ((cur < want)); then
    echo "$want" >"$f" 2>/dev/null && log "sysctl $key: $cur -> $want" || true
  fi
}

# Is 10.(100+N).0.0/16 free: no other fleet's state, no host address or route in or over it?
net_free() {  # N
  local n=$1 oct=$((NET_BASE + $1)) sf
  for sf in "$STATE_DIR"/*.env; do
    [[ -f $sf && $sf != "$(state_file "$NAME")" ]] || continue
    grep -qx "NET=$n" "$sf" && return 1
  done
  [[ $(ip -4 -o addr show 2>/dev/null) == *" inet 10.$oct."* ]] && return 1
  [[ -z $(ip -4 route show root "10.$oct.0.0/16" 2>/dev/null) ]] || return 1
  [[ -z $(ip -4 route show match "10.$oct.0.0/16" 2>/dev/null | grep -v '^default') ]] || return 1
  return 0
}

# ---------------------------------------------------------------- down

do_down() {  # uses NAME, FLEET_DIR (may be empty), CONFIG; holds the name lock
  local nss=() ns pf pid i
  mapfile -t nss < <(fleet_namespaces "$NAME")

  # 1. listeners, by pidfile (only if the pid really is this fleet's sshd)
  if [[ -n $FLEET_DIR && -d $FLEET_DIR ]]; then
    local pids=()
    for pf in "$FLEET_DIR"/sshd-*.pid; do
      [[ -f $pf ]] || continue
      i=${pf##*/sshd-}; i=${i%.pid}
      pid=$(sshd_pid "$i") && pids+=("$pid")
    done
    if ((${#pids[@]})); then kill -KILL "${pids[@]}" 2>/dev/null || true; KILLED+=("${pids[@]}"); fi
    # 2. anything else started with this fleet's config, wherever it runs (a listener's
    #    process title is "sshd: /usr/sbin/sshd -f CONFIG ...", so the match is unanchored)
    pkill -KILL -f -- "$SSHD -f $(printf '%s' "$CONFIG" | sed 's/[][\.*^$+?(){}|]/\\&/g')( |\$)" 2>/dev/null || true
  fi
  # 3. every process left in the fleet's namespaces (sessions, detached agents)
  if ((${#nss[@]})); then kill_netns_procs "${nss[@]}"; fi

  # 4. the namespaces; the kernel then destroys their veths (and so the host sides) in
  #    one batch, far faster than deleting veths one by one (~20 ms each)
  if ((${#nss[@]})); then
    printf 'netns del %s\n' "${nss[@]}" | ip -force -batch - 2>/dev/null || true
  fi
  mapfile -t nss < <(fleet_namespaces "$NAME")
  for ns in "${nss[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  local links=() try
  for ((try = 0; try < 100; try++)); do
    mapfile -t links < <(fleet_host_links "$NAME")
    ((${#links[@]})) || break
    sleep 0.1
  done
  if ((${#links[@]})); then  # left over from a half-made fleet, or the kernel is slow
    printf 'link del %s\n' "${links[@]}" | ip -force -batch - 2>/dev/null || true
  fi

  # 5. killed processes are zombies until their parent (init: sshd daemonizes) reaps them;
  #    give a slow init a moment so that nothing of the fleet shows in ps afterwards
  local p left
  for ((try = 0; try < 50; try++)); do
    left=0
    for p in "${KILLED[@]}"; do [[ -e /proc/$p ]] && { left=1; break; }; done
    ((left)) || break
    sleep 0.1
  done

  # 6. the fleet directory, only if we made it
  if [[ -n $FLEET_DIR && -f $FLEET_DIR/.spindle-fleet ]]; then
    rm -rf -- "$FLEET_DIR"
  fi
  rm -f -- "$(state_file "$NAME")"
}

cmd_down() {
  (($# == 1)) || usage
  NAME=$1; check_name "$NAME"
  require_root
  lock_name "$NAME"
  load_state "$NAME"
  local dir=${OPT_DIR:-${ST_DIR:-$ROOT/$NAME}}
  set_fleet_vars "$NAME" "$dir" "${ST_NET:-0}"
  local t0=$SECONDS
  do_down
  log "fleet $NAME is down ($((SECONDS - t0))s)"
}

# ---------------------------------------------------------------- up

cmd_up() {
  (($# == 2)) || usage
  NAME=$1 COUNT=$2
  check_name "$NAME"
  [[ $COUNT =~ ^[0-9]+$ ]] && ((10#$COUNT >= 1 && 10#$COUNT <= MAX_TARGETS)) ||
    die "COUNT must be 1..$MAX_TARGETS (got '$COUNT')"
  COUNT=$((10#$COUNT))
  if [[ -n $OPT_NET ]]; then
    [[ $OPT_NET =~ ^[0-9]+$ ]] && ((10#$OPT_NET < NET_SLOTS)) || die "--net must be 0..$((NET_SLOTS - 1))"
    OPT_NET=$((10#$OPT_NET))
  fi
  local dir=${OPT_DIR:-$ROOT/$NAME}
  [[ $dir == /* ]] || die "--dir must be an absolute path"
  dir=${dir%/}
  case $dir/ in
    /tmp/*|/var/tmp/*|/root/*)
      ((SHARED_FS)) || log "fleet dir under /tmp, /var/tmp or /root: targets get no private mounts (--shared-fs)"
      SHARED_FS=1 ;;
  esac
  preflight
  lock_name "$NAME"
  local t_start; t_start=$(date +%s.%N)

  # an existing fleet of this NAME goes first
  load_state "$NAME"
  if [[ -n $ST_DIR || -n $(fleet_namespaces "$NAME") || -f $dir/.spindle-fleet ]]; then
    log "fleet $NAME exists: taking it down first"
    set_fleet_vars "$NAME" "${ST_DIR:-$dir}" "${ST_NET:-0}"
    do_down
    if [[ -n $ST_DIR && $ST_DIR != "$dir" && -f $dir/.spindle-fleet ]]; then
      set_fleet_vars "$NAME" "$dir" 0; do_down
    fi
  fi
  if [[ -e $dir ]] && [[ -n $(ls -A "$dir" 2>/dev/null) ]]; then
    die "$dir exists and is not empty (not a fleet directory); refusing to use it"
  fi

  # choose the subnet and record the fleet, under the allocation lock
  mkdir -p "$STATE_DIR"
  local n
  {
    flock 9
    if [[ -n $OPT_NET ]]; then
      net_free "$OPT_NET" || die "--net $OPT_NET (10.$((NET_BASE + OPT_NET)).0.0/16) is in use by another fleet or a host address/route"
      n=$OPT_NET
    else
      local h k
      h=$(printf '%s' "$NAME" | cksum | awk '{ print $1 }')
      n=""
      for ((k = 0; k < NET_SLOTS; k++)); do
        if net_free $(((h + k) % NET_SLOTS)); then n=$(((h + k) % NET_SLOTS)); break; fi
      done
      [[ -n $n ]] || die "no free 10.${NET_BASE}-$((NET_BASE + NET_SLOTS - 1)).0.0/16 subnet left"
    fi
    set_fleet_vars "$NAME" "$dir" "$n"
    printf 'NAME=%s\nDIR=%s\nNET=%s\nCOUNT=%s\nSUBNET=%s\nSHARED_FS=%s\n' \
      "$NAME" "$FLEET_DIR" "$NET" "$COUNT" "$SUBNET" "$SHARED_FS" \
      >"$(state_file "$NAME")"
  } 9>"$ROOT/.locks/.alloc"
  log "fleet $NAME: $COUNT targets in $SUBNET, files in $FLEET_DIR"

  UP_OK=0
  trap 'if ((UP_OK == 0 && KEEP == 0)); then log "bring-up failed: cleaning up"; do_down; fi' EXIT

  # --- files
  mkdir -p -m 0700 "$FLEET_DIR"
  chmod 0711 "$FLEET_DIR"  # traversable: sshd reads authorized_keys as the login user
  : >"$FLEET_DIR/.spindle-fleet"
  cp "$(state_file "$NAME")" "$FLEET_DIR/fleet.env"
  ssh-keygen -q -t ed25519 -N '' -C "spindle-fleet-$NAME-host" -f "$FLEET_DIR/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C "spindle-fleet-$NAME-client" -f "$FLEET_DIR/id_ed25519"
  cp "$FLEET_DIR/id_ed25519.pub" "$FLEET_DIR/authorized_keys"
  cat >"$CONFIG" <<EOF
# sshd_config for spindle netns fleet $NAME (made by containers/netns-fleet.sh).
# Each target runs: $SSHD -f $CONFIG -o ListenAddress=<target ip> -o PidFile=$FLEET_DIR/sshd-<i>.pid
Port 22
HostKey $FLEET_DIR/ssh_host_ed25519_key
AuthorizedKeysFile $FLEET_DIR/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UseDNS no
MaxStartups 1000:30:2000
MaxSessions 100
LogLevel ERROR
Subsystem sftp internal-sftp
PrintMotd no
PrintLastLog no
X11Forwarding no
EOF
  mkdir -p -m 0755 /run/sshd   # sshd's privilege separation directory
  # newer OpenSSH (9.8+) penalises source addresses whose connections fail or are cut off;
  # fault tests cut connections on purpose, so turn that off where it exists
  echo "PerSourcePenalties no" >>"$CONFIG"
  if ! "$SSHD" -t -f "$CONFIG" -o ListenAddress=127.0.0.1 >/dev/null 2>&1; then
    sed -i '/^PerSourcePenalties/d' "$CONFIG"
  fi
  local err
  err=$("$SSHD" -t -f "$CONFIG" -o ListenAddress=127.0.0.1 2>&1) || die "sshd rejects $CONFIG: $err"

  local hostkey; hostkey=$(awk '{ print $1, $2 }' "$FLEET_DIR/ssh_host_ed25519_key.pub")
  local i ip
  {
    echo "[fleet]"
    for ((i = 0; i < COUNT; i++)); do
      ips_of "$i"; echo "t$i ansible_host=$TIP ansible_port=22 ansible_user=root"
    done
    echo
    echo "[fleet:vars]"
    echo "ansible_ssh_private_key_file=$FLEET_DIR/id_ed25519"
    echo "ansible_ssh_common_args='-o UserKnownHostsFile=$FLEET_DIR/known_hosts -o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null'"
    echo "ansible_python_interpreter=/usr/bin/python3"
  } >"$FLEET_DIR/inventory.ini"
  : >"$FLEET_DIR/known_hosts" ; : >"$FLEET_DIR/hosts.txt"
  {
    for ((i = 0; i < COUNT; i++)); do ips_of "$i"; printf 'Host t%d\n  HostName %s\n' "$i" "$TIP"; done
    cat <<EOF
Host *
  User root
  Port 22
  IdentityFile $FLEET_DIR/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $FLEET_DIR/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ControlMaster no
  ControlPath none
EOF
  } >"$FLEET_DIR/ssh_config"
  for ((i = 0; i < COUNT; i++)); do
    ips_of "$i"; ip=$TIP
    echo "$ip" >>"$FLEET_DIR/hosts.txt"
    echo "$ip $hostkey" >>"$FLEET_DIR/known_hosts"
  done

  # --- kernel limits for many neighbours / interfaces (only raised, never lowered)
  local v
  for v in ipv4 ipv6; do
    raise_sysctl net.$v.neigh.default.gc_thresh1 $(( COUNT * 2 > 4096 ? COUNT * 2 : 4096 ))
    raise_sysctl net.$v.neigh.default.gc_thresh2 $(( COUNT * 4 > 16384 ? COUNT * 4 : 16384 ))
    raise_sysctl net.$v.neigh.default.gc_thresh3 $(( COUNT * 8 > 32768 ? COUNT * 8 : 32768 ))
  done

  # --- namespaces and veths: one ip process for the whole fleet
  local t_ns; t_ns=$(date +%s.%N)
  {
    for ((i = 0; i < COUNT; i++)); do
      echo "netns add sp-$NAME-$i"
      echo "link add sp${NAME}h$i type veth peer name sp${NAME}t$i netns sp-$NAME-$i"
      ips_of "$i"; echo "addr add $HIP/30 dev sp${NAME}h$i"
      echo "link set sp${NAME}h$i up"
    done
  } | ip -batch - || die "creating namespaces/veths failed"
  log "namespaces and veths: $(elapsed "$t_ns")s"

  # --- sshds, a few at a time (each launch returns once sshd has daemonized)
  local t_sshd; t_sshd=$(date +%s.%N)
  for ((i = 0; i < COUNT; i++)); do
    launch_target "$i" &
    if (((i + 1) % PARALLEL == 0)); then wait; fi
  done
  wait
  log "sshd launches: $(elapsed "$t_sshd")s"

  # --- wait for every port 22
  local t_probe bad idx=()
  t_probe=$(date +%s.%N)
  for ((i = 0; i < COUNT; i++)); do idx+=("$i"); done
  if ! bad=$(probe_targets "${TIMEOUT:-$((30 + COUNT / 10))}" "${idx[@]}"); then
    log "targets not answering on port 22: $(echo $bad | cut -c1-400)"
    for i in $(echo "$bad" | head -n 3); do
      [[ -s $FLEET_DIR/sshd-$i.log ]] && { log "sshd-$i.log:"; tail -n 5 "$FLEET_DIR/sshd-$i.log" >&2; }
    done
    ((KEEP)) && log "--keep-on-failure: leaving the fleet up; run: $0 down $NAME"
    exit 1
  fi
  log "all $COUNT targets answer on port 22 (wait $(elapsed "$t_probe")s); total up: $(elapsed "$t_start")s"
  UP_OK=1
  trap - EXIT
  echo "$FLEET_DIR/inventory.ini"
}

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

# ---------------------------------------------------------------- per-target commands

load_fleet() {  # NAME -> FLEET_DIR, NET, COUNT or die
  NAME=$1; check_name "$NAME"
  require_root
  load_state "$NAME"
  [[ -n $ST_DIR ]] || die "no fleet named '$NAME' (no $(state_file "$NAME"))"
  set_fleet_vars "$NAME" "$ST_DIR" "$ST_NET"
  COUNT=$ST_COUNT
}

cmd_kill_sshd() {
  (($# == 2)) || usage
  load_fleet "$1"; INDEX=$2; check_index "$INDEX"; INDEX=$((10#$INDEX))
  ((INDEX < COUNT)) || die "fleet $NAME has targets 0..$((COUNT - 1))"
  lock_name "$NAME"
  local pid ns=sp-$NAME-$INDEX
  # the listener first, so it cannot accept anything new, then everything in the target
  pid=$(sshd_pid "$INDEX") && kill -KILL "$pid" 2>/dev/null || true
  [[ -e /run/netns/$ns ]] && kill_netns_procs "$ns"
  rm -f "$FLEET_DIR/sshd-$INDEX.pid"
  log "target $INDEX ($(target_ip "$INDEX" target)): sshd and all its processes killed"
}

cmd_start_sshd() {
  (($# == 2)) || usage
  load_fleet "$1"; INDEX=$2; check_index "$INDEX"; INDEX=$((10#$INDEX))
  ((INDEX < COUNT)) || die "fleet $NAME has targets 0..$((COUNT - 1))"
  lock_name "$NAME"
  if sshd_pid "$INDEX" >/dev/null; then log "target $INDEX: sshd already running"; return 0; fi
  [[ -e /run/netns/sp-$NAME-$INDEX ]] || die "namespace sp-$NAME-$INDEX is gone"
  mkdir -p -m 0755 /run/sshd
  SHARED_FS=$(grep -qx 'SHARED_FS=1' "$FLEET_DIR/fleet.env" 2>/dev/null && echo 1 || echo 0)
  launch_target "$INDEX"
  probe_targets "${TIMEOUT:-30}" "$INDEX" >/dev/null || die "target $INDEX did not come back (see $FLEET_DIR/sshd-$INDEX.log)"
  log "target $INDEX ($(target_ip "$INDEX" target)): sshd up"
}

cmd_exec() {
  (($# >= 3)) || usage
  load_fleet "$1"; INDEX=$2; check_index "$INDEX"; INDEX=$((10#$INDEX)); shift 2
  local pid
  pid=$(sshd_pid "$INDEX") || die "target $INDEX has no running sshd (its mount namespace is gone)"
  exec nsenter -t "$pid" -n -m -u -- "$@"
}

cmd_status() {
  require_root
  if (($# == 0)); then
    local sf
    for sf in "$STATE_DIR"/*.env; do
      [[ -f $sf ]] || continue
      echo "$(sed -n 's/^NAME=//p' "$sf") $(sed -n 's/^SUBNET=//p' "$sf") count=$(sed -n 's/^COUNT=//p' "$sf") dir=$(sed -n 's/^DIR=//p' "$sf")"
    done
    return 0
  fi
  (($# == 1)) || usage
  load_fleet "$1"
  local i up=0 nsok pid
  echo "fleet $NAME: $SUBNET, $COUNT targets, dir $FLEET_DIR"
  for ((i = 0; i < COUNT; i++)); do
    nsok=no; [[ -e /run/netns/sp-$NAME-$i ]] && nsok=yes
    if pid=$(sshd_pid "$i"); then up=$((up + 1)); else pid=down; fi
    ips_of "$i"; echo "t$i $TIP netns=$nsok sshd=$pid"
  done
  echo "sshd up: $up/$COUNT"
  ((up == COUNT))
}

case $CMD in
  up) cmd_up "${POS[@]}" ;;
  down) cmd_down "${POS[@]}" ;;
  status) cmd_status "${POS[@]}" ;;
  kill-sshd) cmd_kill_sshd "${POS[@]}" ;;
  start-sshd) cmd_start_sshd "${POS[@]}" ;;
  exec) cmd_exec "${POS[@]}" ;;
  *) usage ;;
esac
