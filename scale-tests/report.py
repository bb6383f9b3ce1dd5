#!/usr/bin/env python3
"""Turns scale-tests/results/*.json (written by spindle-scale) into summary.md and three SVG
line plots (RSS per stream, daemon CPU per request, p99 latency vs stream count, one line per
backend). Python standard library only.

Usage: python3 scale-tests/report.py [RESULTS_DIR]
"""

import json
import math
import sys
from pathlib import Path

GOAL_RSS_KIB = 64.0
GOAL_P99_MS = 5.0
COLORS = {"epoll": "#1f77b4", "uring": "#d62728"}


def load(d):
    runs = []
    for p in sorted(d.glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            print(f"report: skipping {p}: {e}", file=sys.stderr)
            continue
        r["_file"] = p.name
        runs.append(r)
    return runs


def kind(r):
    if r["label"].endswith("-max") and r.get("load") is not None:
        return "capacity"
    if r.get("soak"):
        return "soak"
    if r.get("faults"):
        return "faults"
    if r.get("load") is None:
        return "probe"
    return "perf"


def g(r, *path, default=None):
    for k in path:
        if not isinstance(r, dict) or k not in r or r[k] is None:
            return default
        r = r[k]
    return r


def f(x, nd=1):
    return "–" if x is None else f"{x:,.{nd}f}"


def nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while not ticks or ticks[-1] < hi - step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    return ticks


def svg_plot(title, xlabel, ylabel, series, goal=None):
    """series: {name: [(x, y), ...]}; goal: optional horizontal line (value, label)."""
    w, h, ml, mr, mt, mb = 640, 400, 70, 130, 40, 50
    pts = [p for s in series.values() for p in s]
    if not pts:
        pts = [(0, 0), (1, 1)]
    xs = nice_ticks(0, max(p[0] for p in pts))
    ymax = max([p[1] for p in pts] + ([goal[0]] if goal else []))
    ys = nice_ticks(0, ymax * 1.1 if ymax > 0 else 1)
    x0, x1, y0, y1 = xs[0], xs[-1], ys[0], ys[-1]

    def sx(x):
        return ml + (x - x0) / (x1 - x0 or 1) * (w - ml - mr)

    def sy(y):
        return h - mb - (y - y0) / (y1 - y0 or 1) * (h - mt - mb)

    o = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>',
    ]
    for t in xs:
        o.append(f'<line x1="{sx(t)}" y1="{mt}" x2="{sx(t)}" y2="{h - mb}" stroke="#eee"/>')
        o.append(f'<text x="{sx(t)}" y="{h - mb + 16}" text-anchor="middle">{t:g}</text>')
    for t in ys:
        o.append(f'<line x1="{ml}" y1="{sy(t)}" x2="{w - mr}" y2="{sy(t)}" stroke="#eee"/>')
        o.append(f'<text x="{ml - 6}" y="{sy(t) + 4}" text-anchor="end">{t:g}</text>')
    o.append(
        f'<rect x="{ml}" y="{mt}" width="{w - ml - mr}" height="{h - mt - mb}" fill="none" stroke="#333"/>'
    )
    o.append(f'<text x="{(ml + w - mr) / 2}" y="{h - 12}" text-anchor="middle">{xlabel}</text>')
    o.append(
        f'<text transform="translate(18,{(mt + h - mb) / 2}) rotate(-90)" '
        f'text-anchor="middle">{ylabel}</text>'
    )
    if goal:
        o.append(
            f'<line x1="{ml}" y1="{sy(goal[0])}" x2="{w - mr}" y2="{sy(goal[0])}" '
            'stroke="#2ca02c" stroke-dasharray="6,4"/>'
        )
        o.append(f'<text x="{ml + 6}" y="{sy(goal[0]) - 5}" fill="#2ca02c">{goal[1]}</text>')
    for i, (name, s) in enumerate(sorted(series.items())):
        c = COLORS.get(name, "#555")
        s = sorted(s)
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        o.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        for x, y in s:
            o.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{c}">'
                f'<title>{name}: {x:g} streams, {y:.3g}</title></circle>'
            )
        ly = mt + 20 + 20 * i
        o.append(
            f'<line x1="{w - mr + 10}" y1="{ly}" x2="{w - mr + 34}" y2="{ly}" stroke="{c}" stroke-width="2"/>'
        )
        o.append(f'<text x="{w - mr + 40}" y="{ly + 4}">{name}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def perf_table(runs):
    rows = [
        "| run | io | streams | achieved req/s | RSS idle MiB | RSS/stream KiB | HWM MiB | "
        "CPU µs/req | daemon CPU | sim CPU | other procs (cores) | daemon CPU wait s | "
        "p50 ms | p99 ms | p99.9 ms | max ms | lost | dup | wrong | pass |",
        "|" + "---|" * 20,
    ]
    for r in runs:
        rows.append(
            f"| {r['label']} | {r['io']} | {r['streams']:,} | "
            f"{f(g(r, 'load', 'achieved_rate'), 0)} | "
            f"{f(g(r, 'rss', 'idle_kib', default=0) / 1024)} | "
            f"{f(g(r, 'rss', 'per_stream_kib'), 2)} | "
            f"{f(g(r, 'rss', 'hwm_kib', default=0) / 1024)} | "
            f"{f(g(r, 'cpu', 'daemon_us_per_request'))} | "
            f"{f(g(r, 'cpu', 'daemon_util', default=0) * 100, 0)}% | "
            f"{f(g(r, 'cpu', 'sim_util', default=0) * 100, 0)}% | "
            f"{f(g(r, 'cpu', 'other_processes_util'), 2)} | "
            f"{f(g(r, 'cpu', 'daemon_runqueue_wait_s'), 2)} | "
            f"{f(g(r, 'latency_ms', 'p50'), 3)} | {f(g(r, 'latency_ms', 'p99'), 3)} | "
            f"{f(g(r, 'latency_ms', 'p999'), 3)} | {f(g(r, 'latency_ms', 'max'), 1)} | "
            f"{g(r, 'load', 'lost')} | {g(r, 'load', 'duplicates')} | "
            f"{g(r, 'load', 'wrong_kind')} | {'✅' if r.get('pass') else '❌'} |"
        )
    return rows


def main():
    d = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    runs = load(d)
    by = {"perf": [], "capacity": [], "faults": [], "soak": [], "probe": []}
    for r in runs:
        by[kind(r)].append(r)
    for k in by:
        by[k].sort(key=lambda r: (r["io"], r["streams"]))
    md = [
        "# spindle scale-test results",
        "",
        "Generated by `scale-tests/report.py` from the JSON files in this directory "
        "(see `scale-tests/README.md` for what each figure means).",
        "",
    ]
    md += ["## Steady load (no faults)", ""] + perf_table(by["perf"]) + [""]
    if by["capacity"]:
        md += ["## Largest stream count that fits the descriptor limit", ""]
        md += perf_table(by["capacity"]) + [""]
        for r in by["capacity"]:
            md.append(
                f"- `{r['label']}`: descriptor limit {g(r, 'fd', 'daemon_limit')}, "
                f"{g(r, 'fd', 'daemon_fds_per_stream')} daemon descriptor(s) per stream, "
                f"{g(r, 'open', 'ok'):,} streams opened in {g(r, 'open', 'seconds'):.2f} s, "
                f"{r['rate_per_stream']:g} req/s per stream"
            )
        md.append("")
    if by["probe"]:
        md += ["## Stream-count probes that could not open every stream", ""]
        for r in by["probe"]:
            md.append(
                f"- `{r['label']}`: opened {g(r, 'open', 'ok')} of {r['streams']:,}; "
                f"failures {g(r, 'open', 'failures')}; first: `{g(r, 'open', 'first_failure')}`; "
                f"daemon descriptor limit {g(r, 'fd', 'daemon_limit')}, "
                f"largest count that fits: {g(r, 'fd', 'max_streams_fit')}"
            )
        md.append("")
    if by["faults"]:
        md += ["## Fault mix", ""] + perf_table(by["faults"]) + [""]
        md += [
            "| run | mode | targets | requests | outcomes | expected | wrong |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in by["faults"]:
            for m, t in sorted(g(r, "modes", default={}).items()):
                md.append(
                    f"| {r['label']} | {m} | {t['targets']} | {t['requests']} | "
                    f"{t['outcomes']} | {t['expected']} | {t['wrong']} |"
                )
            cd = r.get("client_disconnect")
            if cd:
                md.append(
                    f"| {r['label']} | client-disconnect | {cd.get('requests')} in flight | – | "
                    f"daemon alive: {cd.get('daemon_alive')}, targets answering after: "
                    f"{cd.get('targets_ok_after')} | all | {0 if cd.get('pass') else 1} |"
                )
        md.append("")
    if by["soak"]:
        md += ["## Soak", ""] + perf_table(by["soak"]) + [""]
        for r in by["soak"]:
            s = g(r, "rss", "samples", default=[])
            md.append(
                f"- `{r['label']}`: {r['duration_s']:.0f} s, RSS samples (s, KiB): "
                + ", ".join(f"({x[0]:.0f}, {x[1]})" for x in s)
                + f"; slope {f(g(r, 'rss', 'slope_kib_per_min'), 1)} KiB/min"
            )
        md.append("")
    repeats = (
        sorted(load(d / "repeat"), key=lambda r: (r["io"], r["label"])) if (d / "repeat").is_dir() else []
    )
    if repeats:
        md += [
            "## Repeated runs (results/repeat/)",
            "",
            "Same load, run again to show how much other jobs on the machine move the tail.",
            "",
        ]
        md += perf_table(repeats) + [""]
    md += ["## Goals", ""]
    perf = by["perf"]
    if perf:
        worst_rss = max(g(r, "rss", "per_stream_kib", default=0) for r in perf)
        at_top = [
            max((r for r in perf if r["io"] == io), key=lambda r: r["streams"])
            for io in sorted({r["io"] for r in perf})
        ]
        md.append(
            f"- ≤ {GOAL_RSS_KIB:g} KiB daemon memory per idle stream: worst measured "
            f"{worst_rss:.2f} KiB → {'met' if worst_rss <= GOAL_RSS_KIB else 'NOT met'}."
        )
        for r in at_top:
            p99 = g(r, "latency_ms", "p99", default=float("inf"))
            top = r["streams"]
            dist = " (disturbed by other processes)" if g(r, "cpu", "disturbed") else ""
            md.append(
                f"- p99 ≤ {GOAL_P99_MS:g} ms at {top:,} streams × {r['rate_per_stream']:g} "
                f"req/s ({r['io']}): {p99:.3f} ms → "
                f"{'met' if p99 <= GOAL_P99_MS else 'NOT met'}{dist}."
            )
            rep = [x for x in repeats if x["io"] == r["io"] and x["streams"] == top]
            if rep:
                ps = [g(x, "latency_ms", "p99", default=float("inf")) for x in rep]
                ok = sum(p <= GOAL_P99_MS for p in ps)
                md.append(
                    f"  Repeats: p99 {', '.join(f'{p:.2f}' for p in ps)} ms → met in {ok} of {len(ps)}."
                )
    md.append("")
    md += [
        "## Plots",
        "",
        "![RSS per stream](rss_per_stream.svg)",
        "![CPU per request](cpu_per_request.svg)",
        "![p99 latency](p99.svg)",
        "",
    ]
    (d / "summary.md").write_text("\n".join(md))

    def series(path):
        out = {}
        for r in perf:
            v = g(r, *path)
            if v is not None:
                out.setdefault(r["io"], []).append((r["streams"], v))
        return out

    (d / "rss_per_stream.svg").write_text(
        svg_plot("Daemon RSS per idle stream", "streams", "KiB per stream", series(("rss", "per_stream_kib")))
    )
    (d / "cpu_per_request.svg").write_text(
        svg_plot(
            "Daemon CPU per request (1 req/s per stream)",
            "streams",
            "µs CPU per request",
            series(("cpu", "daemon_us_per_request")),
        )
    )
    (d / "p99.svg").write_text(
        svg_plot(
            "p99 exec latency (1 req/s per stream)",
            "streams",
            "ms",
            series(("latency_ms", "p99")),
            goal=(GOAL_P99_MS, "goal 5 ms"),
        )
    )
    print(f"report: wrote {d / 'summary.md'} and 3 SVG plots from {len(runs)} runs")


if __name__ == "__main__":
    main()
