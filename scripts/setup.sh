#!/usr/bin/env bash
# scripts/setup.sh — install the system packages that spindle's tests and demo need
# on a fresh Debian machine (run as root). Idempotent: when everything is present it
# only says so and exits; `apt-get update` runs only when something is missing.
#
# It never starts the system sshd service: the test fleet (containers/netns-fleet.sh)
# runs its own sshd processes with their own config.
set -euo pipefail

log() { echo "setup.sh: $*"; }

# what we need -> the Debian package that provides it
# (a path is checked with -x, a bare name with `command -v`)
declare -a NEEDS=(
  "/usr/sbin/sshd:openssh-server"     # the targets' sshd
  "ssh:openssh-client"                # the controller side, ssh-keygen
  "ssh-keygen:openssh-client"
  "ip:iproute2"                       # ip netns, veth, ss
  "ss:iproute2"
  "pkill:procps"                      # down / kill-sshd
  "ps:procps"
  "/usr/bin/python3:python3"          # the targets' interpreter and the fleet's port probe
  "unshare:util-linux"                # per-target UTS namespace
  "nsenter:util-linux"                # netns-fleet.sh exec
  "flock:util-linux"                  # parallel fleets: subnet allocation lock
  "mount:mount"                       # per-target private /tmp, /var/tmp, /root
  "find:findutils"
  "awk:mawk"
  "timeout:coreutils"
  "/usr/bin/sudo:sudo"                # become tests (sudo with a password, nested agents)
  "/usr/bin/doas:opendoas"            # become tests (doas, password typed on the pty)
  "setfacl:acl"                       # stock Ansible becoming an unprivileged user (su tests)
  "useradd:passwd"                    # become/password tests create their users
  "chpasswd:passwd"
  "bwrap:bubblewrap"                  # ansible-runner --process-isolation without a container
  "/usr/bin/fish:fish"                # login shells users have (tests/ansible/test_field_cases.py):
  "/usr/bin/tcsh:tcsh"                #   not POSIX (fish, csh), and zsh
  "/usr/bin/zsh:zsh"
)

# Optional: the real-container targets (containers/podman-fleet.sh, build-target-image.sh,
# containers/ee/ (the execution environment, tests/ansible/test_ee.py),
# tests/ansible/test_containers.py, which skips without them). Installed where apt-get works
# and we are root; skipped quietly elsewhere.
declare -a WANTS=(
  "podman:podman"
  "/usr/sbin/runc:runc"                # containers/containers.conf: crun fails on these machines
  "mmdebstrap:mmdebstrap"             # the target image, from Debian packages (no registry)
  "iptables:iptables"                 # podman's bridge network (CNI)
)

optional=()
for entry in "${WANTS[@]}"; do
  what=${entry%%:*} pkg=${entry#*:}
  if [[ $what == /* ]]; then
    [[ -x $what ]] && continue
  else
    command -v "$what" >/dev/null 2>&1 && continue
  fi
  [[ " ${optional[*]-} " == *" $pkg "* ]] || optional+=("$pkg")
done
if ((${#optional[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "missing (optional, container targets): ${optional[*]}"
  else
    log "skipping the optional container packages (${optional[*]}): no apt-get or not root"
    optional=()
  fi
fi

missing=()
for entry in "${NEEDS[@]}"; do
  what=${entry%%:*} pkg=${entry#*:}
  if [[ $what == /* ]]; then
    [[ -x $what ]] && continue
  else
    command -v "$what" >/dev/null 2>&1 && continue
  fi
  log "missing: $what (package $pkg)"
  [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0 && ${#optional[@]} == 0)); then
  log "all system dependencies present; nothing to do"
  exit 0
fi

if [[ $(id -u) != 0 ]]; then
  log "need root to install: ${missing[*]}" >&2
  exit 1
fi

# Keep package maintainer scripts from starting services (the system sshd in particular)
# while we install; remove the guard afterwards only if we were the ones who put it there.
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $POLICY ]]; then
  printf '#!/bin/sh\n# temporary, from spindle scripts/setup.sh\nexit 101\n' >"$POLICY"
  chmod 0755 "$POLICY"
  created_policy=1
  trap 'rm -f "$POLICY"' EXIT
  log "installed temporary $POLICY so no service is started"
fi

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
apt-get update -qq
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ((${#optional[@]})); then
  log "apt-get install ${optional[*]}"
  apt-get install -y -qq --no-install-recommends "${optional[@]}" \
    || log "could not install ${optional[*]}: the container tests will skip"
fi

if ((created_policy)); then
  rm -f "$POLICY"
  trap - EXIT
fi

log "done"
