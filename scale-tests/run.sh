#!/usr/bin/env bash
# Full scale-test run (about 15 minutes on 2 cores): builds release, then for both event-loop
# backends (epoll, io_uring) drives 1,000, 5,000 and 10,000 streams at 1 req/s each, the
# largest stream count the descriptor limit allows (at RATE_MAX per stream), a fault-mix run
# and a short soak; writes scale-tests/results/*.json, summary.md and SVG plots. Usage:
#
#   bash scale-tests/run.sh            # everything
#   DURATION=60 SOAK=600 bash scale-tests/run.sh
#
# Knobs (environment): DURATION (s of load per run, 30), SOAK (s, 180), COUNTS
# ("1000 5000 10000"), RATE_MAX (req/s per stream of the max-streams run, 0.5),
# BACKENDS ("epoll uring"), RATE (req/s per stream, 1), FAULT_STREAMS (2000), NICE (0; e.g.
# -10 to shield the measured processes from other jobs on a shared machine — recorded per run).
# Exit status: nonzero if any run failed its checks.
set -uo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-30}
SOAK=${SOAK:-180}
COUNTS=${COUNTS:-"1000 5000 10000"}
RATE_MAX=${RATE_MAX:-0.5}
BACKENDS=${BACKENDS:-"epoll uring"}
RATE=${RATE:-1}
FAULT_STREAMS=${FAULT_STREAMS:-2000}
NICE=${NICE:-0}
OUT=scale-tests/results
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spindle-scale.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

cargo build --release --bins || exit 1
BIN=target/release
mkdir -p "$OUT"
rm -f "$OUT"/*.json
ulimit -n "$(ulimit -Hn)"
status=0

drive() { # NAME ARGS... — one driver run; its JSON goes to $OUT/NAME.json
  local name=$1
  shift
  echo "=== $name: spindle-scale $*" >&2
  "$BIN/spindle-scale" --workdir "$WORK/$name" --label "$name" --out "$OUT/$name.json" \
    --nice "$NICE" "$@"
}

for io in $BACKENDS; do
  for n in $COUNTS; do
    drive "$io-$n" --io "$io" --streams "$n" --rate "$RATE" --duration "$DURATION" || status=1
  done
  # As many streams as the descriptor limit allows (the driver measures descriptors per
  # stream); half the rate keeps the total near 10,000 req/s, which 2 cores can drive.
  drive "$io-max" --io "$io" --streams max --rate "$RATE_MAX" --duration "$DURATION" || status=1
  drive "$io-faults" --io "$io" --streams "$FAULT_STREAMS" --rate "$RATE" --duration "$DURATION" \
    --faults --call-timeout 2 --fail-rate 0.01 --client-disconnect || status=1
  drive "$io-soak" --io "$io" --streams 5000 --rate "$RATE" --soak "$SOAK" || status=1
done

python3 scale-tests/report.py "$OUT" || status=1
echo "results: $OUT/summary.md (status $status)" >&2
exit $status
