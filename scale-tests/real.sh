#!/usr/bin/env bash
# Real-process scale run: AGENTS (300) real Python agents over the `local` transport (the
# daemon spawns `python3` per target; every target is its own stream because its name is part
# of the stream key), driven by spindle-scale --transport local, once per event-loop backend
# and load op. Reports daemon RSS per stream, daemon CPU per request, agent RSS/CPU and
# p50/p99/p99.9 latency; writes scale-tests/results/real/<io>-<op>.json and summary.md.
#
#   bash scale-tests/real.sh                   # 300 agents, ping + echo, both backends (~6 min)
#   NICE=-10 bash scale-tests/real.sh          # what produced the committed figures
#   SOAK=600 bash scale-tests/real.sh          # also a 10-minute soak per backend (ping)
#
# Knobs (environment): AGENTS (300), RATE (req/s per agent, 2), DURATION (s, 30), OPS
# ("ping echo"; "" for soak only; ping = a round trip through the agent with no fork, echo = exec `echo TOKEN`,
# one fork+exec on the target per request), BACKENDS ("epoll uring"), SOAK (s, 0 = none),
# NICE (0), OUT (scale-tests/results/real). Each agent takes ~20 MiB: 300 agents need ~6 GiB of RAM. Exit status: nonzero if
# any run failed its checks (lost/duplicated/cross-wired replies, an agent that died).
set -uo pipefail
cd "$(dirname "$0")/.."

AGENTS=${AGENTS:-300}
RATE=${RATE:-2}
DURATION=${DURATION:-30}
OPS=${OPS-"ping echo"}
BACKENDS=${BACKENDS:-"epoll uring"}
SOAK=${SOAK:-0}
NICE=${NICE:-0}
OUT=${OUT:-scale-tests/results/real}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/spindle-real.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

cargo build --release --bins || exit 1
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
status=0

drive() { # NAME ARGS...
  local name=$1
  shift
  echo "=== $name: spindle-scale $* (uptime:$(uptime | sed 's/.*average//'))" >&2
  target/release/spindle-scale --transport local --streams "$AGENTS" --workdir "$WORK/$name" \
    --label "real-$name" --out "$OUT/$name.json" --nice "$NICE" --idle-secs 5 "$@" || status=1
}

for io in $BACKENDS; do
  for op in $OPS; do
    drive "$io-$op" --io "$io" --op "$op" --rate "$RATE" --duration "$DURATION"
  done
  if [[ $SOAK != 0 ]]; then
    drive "$io-soak" --io "$io" --op ping --rate "$RATE" --soak "$SOAK" --sample-secs 10
  fi
done

python3 - "$OUT" <<'EOF' || status=1
import json, sys
from pathlib import Path

d = Path(sys.argv[1])
rows = []
for p in sorted(d.glob("*.json")):
    r = json.loads(p.read_text())
    lat, cpu, rss, ag, ld = (r.get(k) or {} for k in ("latency_ms", "cpu", "rss", "agents", "load"))
    rows.append(
        f"| {r['io']} | {r['op']}{' (soak)' if r.get('soak') else ''} | {r['streams']} | "
        f"{r['open']['seconds']:.1f} s | {rss.get('idle_kib', 0) / 1024:.1f} MiB | "
        f"{rss.get('per_stream_kib', 0):.2f} KiB | {ag.get('rss_per_agent_kib', 0) / 1024:.1f} MiB | "
        f"{ld.get('achieved_rate', 0):.0f} | {cpu.get('daemon_us_per_request', 0):.1f} µs | "
        f"{cpu.get('agents_us_per_request', 0):.0f} µs | {cpu.get('daemon_runqueue_wait_s', 0):.1f} s | "
        f"{cpu.get('other_processes_util', 0):.2f} | {lat.get('p50', 0):.3f} | {lat.get('p99', 0):.3f} | "
        f"{lat.get('p999', 0):.2f} | {lat.get('max', 0):.1f} | "
        f"{ld.get('lost')} / {ld.get('duplicates')} / {ld.get('mismatched')} | "
        f"{'–' if rss.get('slope_kib_per_min') is None else format(rss['slope_kib_per_min'], '.1f')} | "
        f"{'PASS' if r.get('pass') else 'FAIL'} |"
    )
head = (
    "| backend | op | agents | open | daemon RSS | RSS/stream | RSS/agent | req/s | daemon CPU/req "
    "| agent CPU/req | CPU wait | other cores | p50 ms | p99 ms | p99.9 ms | max ms "
    "| lost / dup / cross | RSS slope KiB/min | |\n|" + "---|" * 19
)
(d / "summary.md").write_text(
    "# Real-process runs (scale-tests/real.sh)\n\n" + head + "\n" + "\n".join(rows) + "\n"
)
print(head + "\n" + "\n".join(rows))
EOF
echo "results: $OUT/summary.md (status $status)" >&2
exit $status
