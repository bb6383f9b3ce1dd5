#!/usr/bin/env python3
"""bench/report.py: the markdown report and SVG plots of a bench/run results directory, and
the checks behind `bench/run --check` / `--verify`.

    bench/report.py DIR            # (re)write DIR/report.md and DIR/plots/*.svg
    bench/report.py --figures DIR  # the compact summary bench/README.md shows
"""

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svgplot  # noqa: E402
from report_tables import (  # noqa: E402
    MODE_ORDER,
    WL_ORDER,
    load,
    _get,
    _cells,
    _modes,
    _by,
    merge_repeats,
    repeats_note,
    spread_table,
    _num,
    table,
    profile_table,
    floor_table,
    speedup_table,
    latency_table,
    spindle_table,
)


def plots(out, runs):
    pdir = os.path.join(out, 'plots')
    os.makedirs(pdir, exist_ok=True)
    made = []
    ok = [r for r in runs if r.get('status') == 'ok']
    direct = [r for r in ok if r.get('rtt_ms') is None]
    modes = _modes(runs)
    # wall time vs fleet size, one chart per workload with 2+ sizes
    for w in WL_ORDER:
        rs = [r for r in direct if r['workload'] == w]
        if len(set(r['hosts'] for r in rs)) < 2:
            continue
        series = {m: [(r['hosts'], r['wall_s']) for r in rs if r['mode'] == m] for m in modes}
        series = {k: v for k, v in series.items() if v}
        p = os.path.join(pdir, 'time-vs-hosts-%s.svg' % w)
        svgplot.line_chart(
            p, series, 'wall time vs fleet size: %s' % w, 'targets', 'wall time (s)', logx=True, logy=True
        )
        made.append(p)
        series = {m: [(r['hosts'], r['controller']['cpu_s']) for r in rs if r['mode'] == m] for m in modes}
        series = {k: v for k, v in series.items() if v}
        p = os.path.join(pdir, 'cpu-vs-hosts-%s.svg' % w)
        svgplot.line_chart(
            p,
            series,
            'controller CPU vs fleet size: %s' % w,
            'targets',
            'controller CPU (user+sys, s)',
            logx=True,
            logy=True,
        )
        made.append(p)
    # wall time vs RTT, one chart per (workload, hosts)
    emu = [r for r in ok if r.get('rtt_ms') is not None]
    for w, h in sorted(set((r['workload'], r['hosts']) for r in emu)):
        rs = [r for r in emu if r['workload'] == w and r['hosts'] == h]
        if len(set(r['rtt_ms'] for r in rs)) < 2:
            continue
        series = {m: [(r['rtt_ms'], r['wall_s']) for r in rs if r['mode'] == m] for m in modes}
        series = {k: v for k, v in series.items() if v}
        p = os.path.join(pdir, 'time-vs-rtt-%s-h%d.svg' % (w, h))
        svgplot.line_chart(
            p, series, 'wall time vs RTT: %s on %d target(s)' % (w, h), 'RTT (ms, linkemu)', 'wall time (s)'
        )
        made.append(p)
    # bytes on the wire per task, direct runs, largest fleet size per workload
    groups = []
    values = {}
    for w in WL_ORDER:
        rs = [r for r in direct if r['workload'] == w and _get(r, 'wire.bytes_per_task')]
        if not rs:
            continue
        hmax = max(r['hosts'] for r in rs)
        g = '%s h%d' % (w, hmax)
        groups.append(g)
        for r in rs:
            if r['hosts'] == hmax:
                values[(g, r['mode'])] = r['wire']['bytes_per_task']
    if groups:
        p = os.path.join(pdir, 'bytes-per-task.svg')
        svgplot.bar_chart(
            p,
            groups,
            modes,
            values,
            'bytes on the wire per task (veth counters, both ways)',
            'bytes per host-task',
            logy=True,
        )
        made.append(p)
    return made


def pngs(out):
    """PNG copies of every plot, where rsvg-convert (librsvg2-bin) is installed."""
    conv = shutil.which('rsvg-convert')
    pdir = os.path.join(out, 'plots')
    if not conv or not os.path.isdir(pdir):
        return 0
    n = 0
    for x in sorted(os.listdir(pdir)):
        if x.endswith('.svg'):
            if (
                subprocess.run(
                    [conv, '-o', os.path.join(pdir, x[:-4] + '.png'), os.path.join(pdir, x)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ).returncode
                == 0
            ):
                n += 1
    return n


def where_lines(meta):
    """Which fleet and which controller ran the suite (bullets)."""
    fi = meta.get('fleet_info') or {'kind': meta.get('fleet')}
    ci = meta.get('controller') or {'kind': 'host (not recorded: results from before --controller)'}
    L = []
    fl = '- **fleet**: `%s`' % fi.get('kind')
    if fi.get('image'):
        fl += ', image `%s` (id %s)' % (fi['image'], fi.get('image_id'))
    if fi.get('network'):
        fl += '; %s' % fi['network']
    L.append(fl)
    meas = ['%s: %s' % (k.replace('_', ' '), fi[k]) for k in ('target_cpu', 'wire', 'files') if fi.get(k)]
    if meas:
        L.append('  (measured: %s)' % '; '.join(meas))
    if ci.get('kind') == 'container':
        L.append(
            '- **controller**: `container`, image `%s` (id %s), container `%s`, %s, Python %s, '
            'ansible-core %s; %s'
            % (
                ci.get('image'),
                ci.get('image_id'),
                ci.get('container'),
                ci.get('engine'),
                ci.get('python'),
                ci.get('ansible_core'),
                ci.get('network'),
            )
        )
        L.append(
            '  (each run: %s; controller CPU by rusage inside the container, the container\'s '
            'cgroup CPU in `controller.cpu_container_cgroup_s` as a cross-check)' % ci.get('how')
        )
    else:
        L.append(
            '- **controller**: `%s`%s'
            % (
                ci.get('kind'),
                ', Python %s, venv `%s`' % (ci['python'], ci.get('stock_venv')) if ci.get('python') else '',
            )
        )
    return L


def write_report(out):
    res = load(out)
    meta = res['meta']
    raw = res['runs']
    runs = merge_repeats(raw)
    made = plots(out, runs)
    L = ['# spindle bench: suite `%s`' % meta['suite'], '']
    L.append(
        'Run %s to %s (%.0f s), fleet `%s`, %s CPUs, kernel %s, load average %s at start, %s at end.'
        % (
            meta.get('started'),
            meta.get('finished'),
            meta.get('elapsed_s', 0),
            meta.get('fleet'),
            meta['machine'].get('cpus'),
            meta['machine'].get('kernel'),
            ' / '.join('%.1f' % x for x in meta['machine'].get('loadavg_start', [])),
            ' / '.join('%.1f' % x for x in meta['machine'].get('loadavg_end', [])),
        )
    )
    L.append('')
    L += where_lines(meta)
    L.append('')
    L.append(repeats_note(runs))
    L.append('')
    L.append('## Modes')
    L.append('')
    for name in MODE_ORDER:
        m = meta['modes'].get(name)
        if m is None:
            continue
        if m['available']:
            L.append('- **%s**: %s' % (name, ', '.join('%s=%s' % kv for kv in sorted(m['info'].items()))))
        else:
            L.append('- **%s**: SKIPPED: %s' % (name, m['reason']))
    for n in meta.get('notes', []):
        L.append('- %s' % n)
    forks = sorted(set((r['hosts'], r['forks']) for r in runs))
    L.append('- forks: %s' % ', '.join('%d hosts -> %d' % hf for hf in forks))
    if any(r.get('rtt_ms') is not None for r in runs):
        L.append(
            '- link emulation: `bench/linkemu.py` (no netem in this kernel): a TCP proxy on the '
            'controller, 127.0.0.1:port_i -> target_i:22, holding every chunk for RTT/2 in each '
            'direction in a per-connection delay queue%s. The "direct" cells do not go through it.'
            % (
                ', bandwidth cap %s Mbit/s per target and direction' % meta['linkemu'][0]['rate_mbit']
                if meta.get('linkemu') and meta['linkemu'][0].get('rate_mbit')
                else ''
            )
        )
    L.append('')
    L.append('## Results')
    L.append('')
    L.append(
        'Values with the ratio to stock of the same cell in parentheses (0.25: a quarter of '
        'stock\'s). "failed": the run exited non-zero (see its log).'
    )
    L.append('')
    L += speedup_table(runs)
    L += floor_table(runs)
    L += table(runs, 'wall_s', 'Wall time (s)')
    L += spread_table(runs)
    L += table(
        runs,
        'controller.cpu_s',
        'Controller CPU (s, user+sys of ansible-playbook, its children and the '
        'processes it left behind, e.g. ssh ControlPersist masters; spindle: the daemon included)',
    )
    L += table(
        runs,
        'controller.peak_rss_tree_kb',
        'Controller peak memory (sum of RSS of the process tree, sampled every 0.5 s)',
        unit='kB',
    )
    L += table(
        runs,
        'controller.peak_rss_max_process_kb',
        'Controller largest single process (max ru_maxrss)',
        unit='kB',
    )
    L += profile_table(runs)
    big = [r for r in runs if r.get('bigcopy')]
    if big:
        L += table(
            big,
            'bigcopy.fraction_of_line_rate',
            'bigcopy at line rate: the copy task\'s '
            'throughput over the raw `ssh tI \'cat > f\' < file` to the same targets, measured '
            'in the same run (meta line_rate; 1.0 = line rate)',
            ratio=False,
        )
        L += table(big, 'bigcopy.MiB_per_s', 'bigcopy: the copy task\'s throughput (MiB/s, all targets)')
    L += table(
        runs, 'targets.cpu_s', 'Target CPU (s, every process in the targets; how: the fleet line above)'
    )
    L += table(
        runs,
        'wire.bytes_per_task',
        'Bytes on the wire per host-task (each target\'s link counters, both directions)',
        unit='B',
    )
    L += table(runs, 'wire.bytes_total', 'Bytes on the wire, total', unit='B')
    L += table(
        runs,
        'targets.inodes_created',
        'Files created on the targets during the run (tmpfs inodes '
        'in /tmp, /var/tmp, /root, including ones deleted again)',
        ratio=False,
    )
    L += table(
        runs, 'targets.files_left', 'Files left behind on the targets (entries after - before)', ratio=False
    )
    L += latency_table(runs)
    L += spindle_table(runs)
    failed = [r for r in raw if r.get('status') != 'ok']
    if failed:
        L.append('### Failed runs')
        L.append('')
        for r in failed:
            L.append('- `%s` (rc %s): `%s`' % (r['id'], r.get('rc'), r.get('log')))
            if r.get('error'):
                L.append('')
                L.append('  ```')
                L += ['  ' + x for x in r['error'].splitlines()[-6:]]
                L.append('  ```')
        L.append('')
    cap = os.path.join(out, 'capacity.json')
    if os.path.exists(cap):
        with open(cap) as f:
            c = json.load(f)
        L.append('## Capacity model check (`spindle capacity --validate`, docs/capacity.md)')
        L.append('')
        L.append('Fitted on fleet sizes %s, predicting %s:' % (c.get('fit_sizes'), c.get('held_out')))
        L.append('')
        L.append('| mode | workload | hosts | measured s | predicted s | error |')
        L.append('|---|---|---:|---:|---:|---:|')
        for row in c.get('validation', []):
            L.append(
                '| %s | %s | %d | %.1f | %.1f | %+.0f%% |'
                % (
                    row['mode'],
                    row['workload'],
                    row['hosts'],
                    row['measured_s'],
                    row['predicted_s'],
                    row['error_pct'],
                )
            )
        L.append('')
    if made:
        L.append('## Plots')
        L.append('')
        for p in sorted(
            set(
                made
                + [
                    os.path.join(out, 'plots', x)
                    for x in os.listdir(os.path.join(out, 'plots'))
                    if x.endswith('.svg')
                ]
            )
        ):
            rel = os.path.relpath(p, out)
            L.append('![%s](%s)' % (os.path.basename(p), rel))
        L.append('')
    with open(os.path.join(out, 'report.md'), 'w') as f:
        f.write('\n'.join(L) + '\n')
    pngs(out)
    return os.path.join(out, 'report.md')


def figures(out):
    """A compact markdown summary (what bench/README.md's "Latest figures" shows)."""
    res = load(out)
    runs, meta = merge_repeats(res['runs']), res['meta']
    by = _by(runs)
    modes = _modes(runs)
    most = max([r.get('repeats', 1) for r in runs] or [1])
    L = [
        'Suite `%s`, %s, %.0f s, load average %s at start, fleet `%s`, controller `%s`%s; %s.'
        % (
            meta['suite'],
            meta.get('started'),
            meta.get('elapsed_s', 0),
            '%.1f' % meta['machine']['loadavg_start'][0],
            meta.get('fleet'),
            (meta.get('controller') or {}).get('kind', 'host'),
            ' (image %s, id %s)' % (meta['controller'].get('image'), meta['controller'].get('image_id'))
            if (meta.get('controller') or {}).get('kind') == 'container'
            else '',
            'one run per cell' if most <= 1 else 'each figure the median of up to %d runs' % most,
        ),
        '',
    ]
    skipped = ['%s (%s)' % (n, m['reason']) for n, m in meta['modes'].items() if not m['available']]
    if skipped:
        L += ['Skipped: ' + '; '.join(skipped), '']
    L.append(
        '| workload | hosts | link | '
        + ' | '.join('%s s' % m for m in modes)
        + ' | '
        + ' | '.join('%s vs stock' % m for m in modes if m != 'stock')
        + ' |'
    )
    L.append('|---|---:|---|' + '---:|' * (2 * len(modes) - 1))
    for w, h, rtt in _cells(runs):
        base = by.get((w, h, rtt, 'stock'))
        vals, ratios = [], []
        for m in modes:
            r = by.get((w, h, rtt, m))
            vals.append('' if r is None else 'failed' if r.get('status') != 'ok' else '%.1f' % r['wall_s'])
            if m != 'stock':
                ok = r and base and r.get('status') == 'ok' and base.get('status') == 'ok'
                ratios.append('%.1fx' % (base['wall_s'] / r['wall_s']) if ok else '')
        L.append(
            '| %s | %d | %s | %s | %s |'
            % (w, h, 'direct' if rtt is None else '%d ms' % rtt, ' | '.join(vals), ' | '.join(ratios))
        )
    L.append('')
    L.append(
        'Per host-task, direct link (controller CPU ms / target CPU ms / bytes on the wire / '
        'files created / p50 latency ms; spindle: round trips):'
    )
    L.append('')
    L.append('| workload | hosts | ' + ' | '.join(modes) + ' |')
    L.append('|---|---:|' + '---|' * len(modes))
    for w, h, rtt in _cells(runs):
        if rtt is not None:
            continue
        row = []
        for m in modes:
            r = by.get((w, h, rtt, m))
            if not r or r.get('status') != 'ok' or not r.get('task_results'):
                row.append('')
                continue
            n = float(r['task_results'])
            cell = '%.0f / %.0f / %s / %.1f / %.0f' % (
                1000 * r['controller']['cpu_s'] / n,
                1000 * (_get(r, 'targets.cpu_s') or 0) / n,
                _num(_get(r, 'wire.bytes_per_task'), 'B').replace(' ', '\u00a0'),
                (_get(r, 'targets.inodes_created') or 0) / n,
                _get(r, 'latency_ms.p50') or 0,
            )
            if m == 'spindle' and r.get('spindle'):
                cell += ' / %s rt' % _num(r['spindle'].get('round_trips_per_task'))
            row.append(cell)
        L.append('| %s | %d | %s |' % (w, h, ' | '.join(row)))
    L.append('')
    return '\n'.join(L)


REQUIRED = [
    'id',
    'mode',
    'workload',
    'hosts',
    'status',
    'wall_s',
    'controller.cpu_s',
    'controller.peak_rss_max_process_kb',
    'controller.peak_rss_tree_kb',
]
REQUIRED_OK = ['latency_ms.p50', 'latency_ms.p90', 'latency_ms.p99', 'latency_ms.max', 'task_results']
REQUIRED_NETNS = [
    'targets.cpu_s',
    'wire.bytes_total',
    'wire.bytes_per_task',
    'targets.inodes_created',
    'targets.files_left',
]


#: Workloads whose every module task must run in an agent (no async, no apt, no old-style
#: modules): `--check` fails a spindle run of one of them that took the stock path.
ALL_IN_AGENT = frozenset(
    (
        'hostname100',
        'hostname20',
        'mixed',
        'bigcopy',
        'manyfiles',
        'manyfiles100',
        'ping1-first',
        'ping1-again',
    )
)


def verify(out, strict=False):
    """Problems with a results directory (empty list: fine).  Structure only, no timings."""
    problems = []
    warnings = []
    try:
        res = load(out)
    except (OSError, ValueError) as e:
        return ['results.json: %s' % e]
    meta = res.get('meta') or {}
    runs = res.get('runs')
    if not isinstance(runs, list) or not runs:
        return ['results.json has no runs']
    if meta.get('fleet') and 'controller' in meta:
        for k in ('fleet_info',):
            if not meta.get(k):
                problems.append('results.json: meta.%s missing' % k)
    for m in ('stock',):
        if m in meta.get('modes', {}) and not meta['modes'][m].get('available'):
            problems.append('mode %s was not available: %s' % (m, meta['modes'][m].get('reason')))
    for name, m in (meta.get('modes') or {}).items():
        if m.get('available') and not any(r['mode'] == name for r in runs):
            problems.append('mode %s was available but has no runs' % name)
        if not m.get('available') and not m.get('reason'):
            problems.append('mode %s skipped without a reason' % name)
    for r in runs:
        rid = r.get('id', '?')
        path = os.path.join(out, 'runs', '%s.json' % rid)
        try:
            with open(path) as f:
                json.load(f)
        except (OSError, ValueError) as e:
            problems.append('%s: %s' % (path, e))
        keys = list(REQUIRED)
        if r.get('status') == 'ok':
            keys += REQUIRED_OK
            if meta.get('fleet') in ('netns', 'podman'):
                keys += REQUIRED_NETNS
            if r.get('mode') == 'spindle':
                keys += ['spindle.calls', 'spindle.round_trips_per_task', 'spindle.in_agent_share']
                share = _get(r, 'spindle.in_agent_share')
                if r.get('workload') in ALL_IN_AGENT and share is not None and share < 1.0:
                    problems.append(
                        '%s: only %.0f%% of module runs in the agent (%s); workload %s '
                        'should run every module there'
                        % (rid, 100.0 * share, _get(r, 'spindle.paths.stock_reasons'), r.get('workload'))
                    )
        for k in keys:
            if _get(r, k) is None:
                problems.append('%s: missing %s' % (rid, k))
        if r.get('status') != 'ok':
            msg = '%s: run failed (rc %s, log %s)' % (rid, r.get('rc'), r.get('log'))
            if r.get('mode', '').startswith('stock') or strict:
                problems.append(msg)
            else:
                warnings.append(msg)
        if r.get('log') and not os.path.exists(os.path.join(out, r['log'])):
            problems.append('%s: log %s missing' % (rid, r['log']))
    rep = os.path.join(out, 'report.md')
    if not os.path.exists(rep) or '| workload |' not in open(rep).read():
        problems.append('report.md missing or without tables')
    elif 'controller' in meta and '**controller**' not in open(rep).read():
        problems.append('report.md does not say which fleet and controller ran the suite')
    svgs = (
        [x for x in os.listdir(os.path.join(out, 'plots'))]
        if os.path.isdir(os.path.join(out, 'plots'))
        else []
    )
    svgs = [x for x in svgs if x.endswith('.svg')]
    if not svgs:
        problems.append('no plots')
    for x in svgs:
        try:
            root = ET.parse(os.path.join(out, 'plots', x)).getroot()
            if not root.tag.endswith('svg'):
                problems.append('plots/%s is not an SVG' % x)
        except ET.ParseError as e:
            problems.append('plots/%s: %s' % (x, e))
    for w in warnings:
        print('check: WARN %s' % w)
    return problems


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '--figures':
        print(figures(sys.argv[2]))
        sys.exit(0)
    if len(sys.argv) != 2:
        print(__doc__.strip())
        sys.exit(2)
    print(write_report(sys.argv[1]))
