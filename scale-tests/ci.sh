#!/usr/bin/env bash
# Reduced scale test for CI (about 60 s after the build): 2,000 simulated targets with the
# default fault mix (die, hang, garbage, oversize, slow-reader), a 1% remote-error rate and a
# client that disconnects mid-request, once per event-loop backend. Exits nonzero on any lost,
# duplicated, unknown or cross-wired reply, any reply of the wrong error kind, a fault mode that
# never produced its error, a stream that failed to open, or a daemon that died.
#
#   bash scale-tests/ci.sh            # results in scale-tests/results/ci/
set -uo pipefail
cd "$(dirname "$0")/.."

STREAMS=${STREAMS:-2000}
DURATION=${DURATION:-20}
OUT=scale-tests/results/ci
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spindle-ci.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

cargo build --release --bins || exit 1
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
status=0
for io in epoll uring; do
  echo "=== ci-$io: $STREAMS streams, fault mix, $DURATION s" >&2
  target/release/spindle-scale --io "$io" --streams "$STREAMS" --duration "$DURATION" \
    --faults --call-timeout 3 --fail-rate 0.01 --client-disconnect --idle-secs 1 \
    --service-ms 1 --workdir "$WORK/$io" --label "ci-$io" --out "$OUT/ci-$io.json" || {
    cp -r "$WORK/$io" "$OUT/ci-$io-logs" 2>/dev/null
    echo "ci-$io FAILED: see $OUT/ci-$io.json (failures, load.samples) and $OUT/ci-$io-logs/" >&2
    status=1
  }
done
# The hostile-target soak (issue 13): 50 well-behaved local agents beside 10 hostile targets
# (log flood, endless output, endless fetch, slow reader, garbage) for SOAK_SECS (60 here; the
# 5-minute run: SOAK_SECS=300); correct answers, daemon RSS and log size bounded.
echo "=== soak: ${SOAK_SECS:-60} s" >&2
python3 scale-tests/hostile_soak.py --secs "${SOAK_SECS:-60}" --bin target/release/spindle \
  --out "$OUT/soak.json" || status=1
exit $status
