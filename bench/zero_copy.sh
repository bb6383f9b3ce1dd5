#!/usr/bin/env bash
# bench/zero_copy.sh — put one file to N namespace sshd targets through one daemon, once with
# the zero-copy path (splice) and once with the read/write fallback (`serve --no-splice`), in
# the same run; reports the daemon's own CPU time (user+sys from /proc), the bytes it copied
# through user space, and the ratio. ssh's encryption CPU is the same in both and not counted.
#
#   bench/zero_copy.sh [TARGETS=10] [SIZE_MIB=1024]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10}
MIB=${2:-1024}
SPINDLE=${SPINDLE_BIN:-target/release/spindle}
[[ -x $SPINDLE ]] || cargo build --release -q
WORK=$(mktemp -d "$PWD/target/zero-copy.XXXXXX")   # on disk, not tmpfs
FLEET=zc
cleanup() {
  [[ -n ${PID:-} ]] && kill "$PID" 2>/dev/null || true
  bash containers/netns-fleet.sh down "$FLEET" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
echo "== $N targets, ${MIB} MiB file" >&2
INV=$(bash containers/netns-fleet.sh up "$FLEET" "$N" 2>/dev/null | tail -1)
head -c $((MIB << 20)) /dev/urandom >"$WORK/src.bin"
TICK=$(getconf CLK_TCK)

cpu_s() { awk -v t="$TICK" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }

run_mode() { # $1 = label, $2.. = extra serve flags
  local label=$1; shift
  "$SPINDLE" serve --socket "$WORK/s.sock" "$@" 2>/dev/null &
  PID=$!
  for _ in $(seq 100); do [[ -S $WORK/s.sock ]] && break; sleep 0.05; done
  "$SPINDLE" ping -i "$INV" --socket "$WORK/s.sock" >/dev/null 2>&1
  local c0 t0 c1 t1
  c0=$(cpu_s "$PID"); t0=$(date +%s.%N)
  mkdir -p "$WORK/dest"
  "$SPINDLE" put -i "$INV" --socket "$WORK/s.sock" "$WORK/src.bin" "$WORK/dest/{host}.bin" >/dev/null 2>"$WORK/put.err" \
    || { cat "$WORK/put.err" >&2; exit 1; }
  c1=$(cpu_s "$PID"); t1=$(date +%s.%N)
  local st copied
  st=$("$SPINDLE" stats --socket "$WORK/s.sock")
  copied=$(echo "$st" | python3 -c 'import json,sys; t=json.load(sys.stdin)["transfer"]; print(t["file_bytes_copied"])')
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  rm -rf "$WORK/dest" "$WORK/s.sock"
  awk -v l="$label" -v c="$(awk "BEGIN{print $c1-$c0}")" -v w="$(awk "BEGIN{print $t1-$t0}")" -v b="$copied" -v tot=$((N * (MIB << 20))) \
    'BEGIN { printf "%-10s %10.2f %10.2f %16.0f %8.3f%%\n", l, c, w, b, 100*b/tot }'
}
printf '%-10s %10s %10s %16s %9s\n' mode "daemon CPU s" "wall s" "bytes copied" "copied"
A=$(run_mode splice); echo "$A"
B=$(run_mode read/write --no-splice); echo "$B"
ca=$(echo "$A" | awk '{print $2}'); cb=$(echo "$B" | awk '{print $2}')
awk -v a="$ca" -v b="$cb" 'BEGIN { if (a > 0) printf "daemon CPU ratio read/write : splice = %.1fx\n", b/a }'
