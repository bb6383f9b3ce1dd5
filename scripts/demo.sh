#!/usr/bin/env bash
# scripts/demo.sh — the README's main job on an embedded default: a local fleet of
# network-namespace sshd targets (10 by default), the same command fanned out ROUNDS times
# by stock Ansible (ssh + pipelining, ControlPersist as shipped) and by spindle (one daemon,
# persistent agents), timed side by side in one run. Tears the fleet down at the end.
#
#   scripts/demo.sh [TARGETS] [ROUNDS]        (make demo runs it with the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}
ROUNDS=${2:-5}
VENV=${SPINDLE_VENV:-.venv}
SPINDLE=${SPINDLE_BIN:-target/release/spindle}
WORK=$(mktemp -d "${XDG_RUNTIME_DIR:-/run}/spindle-demo.XXXXXX")
FLEET=demo

cleanup() {
  [[ -n ${DAEMON_PID:-} ]] && kill "$DAEMON_PID" 2>/dev/null || true
  bash containers/netns-fleet.sh down "$FLEET" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== bringing up $N sshd targets (network namespaces)"
INV=$(bash containers/netns-fleet.sh up "$FLEET" "$N" | tail -1)

export ANSIBLE_PIPELINING=True ANSIBLE_FORKS=$N ANSIBLE_LOCAL_TEMP="$WORK/ansible-tmp" \
  ANSIBLE_SSH_CONTROL_PATH_DIR="$WORK/cp" ANSIBLE_STDOUT_CALLBACK=minimal \
  ANSIBLE_HOME="$WORK/ansible-home"

"$SPINDLE" serve --socket "$WORK/spindle.sock" 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do [[ -S $WORK/spindle.sock ]] && break; sleep 0.05; done

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
printf '\n%-7s %14s %14s %8s\n' round "stock (s)" "spindle (s)" ratio
tot_s=0 tot_p=0
for r in $(seq "$ROUNDS"); do
  t0=$(now)
  "$VENV/bin/ansible" all -i "$INV" -m command -a hostname >"$WORK/stock.out" 2>&1 \
    || { cat "$WORK/stock.out"; echo "stock ansible failed"; exit 1; }
  t1=$(now)
  "$SPINDLE" run -i "$INV" --socket "$WORK/spindle.sock" -- hostname >"$WORK/spindle.out" 2>&1 \
    || { cat "$WORK/spindle.out"; echo "spindle failed"; exit 1; }
  t2=$(now)
  s=$(calc "$t1 - $t0"); p=$(calc "$t2 - $t1")
  tot_s=$(calc "$tot_s + $s"); tot_p=$(calc "$tot_p + $p")
  printf '%-7s %14.3f %14.3f %7.1fx\n' "$r" "$s" "$p" "$(calc "$s / $p")"
done
printf '%-7s %14.3f %14.3f %7.1fx\n' total "$tot_s" "$tot_p" "$(calc "$tot_s / $tot_p")"
echo
echo "stock:   $(grep -c 'CHANGED\|SUCCESS' "$WORK/stock.out") of $N hosts ok in the last round"
echo "spindle: $(tail -1 "$WORK/spindle.out")"
echo "(round 1 includes connection set-up for both; ratio = stock / spindle wall time, same fleet, same run)"
