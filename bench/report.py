#!/usr/bin/env python3
"""bench/report.py: the markdown report and SVG plots of a bench/run results directory, and
the checks behind `bench/run --check` / `--verify`.

    bench/report.py DIR            # (re)write DIR/report.md and DIR/plots/*.svg
    bench/report.py --figures DIR  # the compact summary bench/README.md shows
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import svgplot  # noqa: E402

MODE_ORDER = ['stock', 'stock-nopipe', 'mitogen', 'spindle', 'floor']
WL_ORDER = [
    'hostname100',
    'hostname20',
    'mixed',
    'bigcopy',
    'manyfiles100',
    'manyfiles',
    'ping1-first',
    'ping1-again',
]


def load(out):
    with open(os.path.join(out, 'results.json')) as f:
        return json.load(f)


def _get(rec, path):
    v = rec
    for k in path.split('.'):
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def _link(rec):
    return 'direct' if rec.get('rtt_ms') is None else '%d ms' % rec['rtt_ms']


def _cells(runs):
    keys = []
    for r in runs:
        k = (r['workload'], r['hosts'], r.get('rtt_ms'))
        if k not in keys:
            keys.append(k)

    def order(k):
        w, h, rtt = k
        return (rtt is not None, WL_ORDER.index(w) if w in WL_ORDER else 99, h, rtt or 0)

    return sorted(keys, key=order)


def _modes(runs):
    present = set(r['mode'] for r in runs)
    return [m for m in MODE_ORDER if m in present] + sorted(present - set(MODE_ORDER))


def _by(runs):
    d = {}
    for r in runs:
        d[(r['workload'], r['hosts'], r.get('rtt_ms'), r['mode'])] = r
    return d


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _median_of(values):
    """Records merged key by key: numbers by their median, anything else the first run's."""
    first = values[0]
    if isinstance(first, dict):
        out = {}
        for k in first:
            vs = [v[k] for v in values if isinstance(v, dict) and k in v]
            out[k] = _median_of(vs) if len(vs) == len(values) else first[k]
        return out
    if all(_is_num(v) for v in values):
        return first if all(v == first for v in values) else statistics.median(values)
    return first


#: The figures whose spread (min, max over a cell's repeated runs) the report shows.
SPREAD = ('wall_s', 'controller.cpu_s', 'bigcopy.fraction_of_line_rate')


def merge_repeats(runs):
    """One record per cell and mode. With ``bench/run --repeat N`` each cell's modes run N
    times, interleaved; a merged record's figures are the medians of the runs that succeeded
    (``repeats``: how many, ``repeats_failed``; ``spread``: min and max of :data:`SPREAD`).
    A cell whose every run failed keeps its first run, so the tables say "failed"."""
    groups = {}
    for r in runs:
        groups.setdefault((r['workload'], r['hosts'], r.get('rtt_ms'), r['mode']), []).append(r)
    merged = []
    for group in groups.values():
        ok = [r for r in group if r.get('status') == 'ok']
        if len(ok) <= 1:
            rec = dict(ok[0] if ok else group[0])
        else:
            rec = _median_of(ok)
            rec['spread'] = {}
            for path in SPREAD:
                vs = [_get(r, path) for r in ok]
                if all(_is_num(v) for v in vs):
                    rec['spread'][path] = [min(vs), max(vs)]
        rec['repeats'] = len(ok)
        rec['repeats_failed'] = len(group) - len(ok)
        merged.append(rec)
    return merged


def repeats_note(runs):
    """What each figure stands for (``runs`` merged): one run, or the median of several."""
    most = max([r.get('repeats', 1) for r in runs] or [1])
    if most <= 1:
        return 'Other work on the machine shares the same CPUs: figures are noisy, one run per cell.'
    return (
        'Other work on the machine shares the same CPUs: each figure is the median of up to %d '
        'runs of its cell (`--repeat %d`, the modes interleaved: run 1 of every mode, then run 2, '
        '...); "Spread over the repeats" shows how far apart the runs were.' % (most, most)
    )


def spread_table(runs):
    """Min-max of wall time and controller CPU per cell and mode, for repeated cells."""
    if not any(r.get('spread') for r in runs):
        return []
    by = _by(runs)
    modes = _modes(runs)
    lines = _table_head(
        'Spread over the repeats (min-max of wall s / controller CPU s, runs that succeeded)', modes
    )
    for w, h, rtt in _cells(runs):
        row = []
        for m in modes:
            r = by.get((w, h, rtt, m)) or {}
            sp = r.get('spread') or {}
            if 'wall_s' not in sp:
                row.append('')
                continue
            cpu = sp.get('controller.cpu_s') or [None, None]
            failed = r.get('repeats_failed')
            row.append(
                '%s-%s / %s-%s (%d runs%s)'
                % (
                    _num(sp['wall_s'][0]),
                    _num(sp['wall_s'][1]),
                    _num(cpu[0]),
                    _num(cpu[1]),
                    r['repeats'],
                    ', %d failed' % failed if failed else '',
                )
            )
        lines.append('| %s | %d | %s | %s |' % (w, h, _link({'rtt_ms': rtt}), ' | '.join(row)))
    lines.append('')
    return lines


def _table_head(title, modes):
    """A section title and the header of a table with a row per cell and a column per mode."""
    return [
        '### %s' % title,
        '',
        '| workload | hosts | link | ' + ' | '.join(modes) + ' |',
        '|---|---:|---|' + '---:|' * len(modes),
    ]


def _num(v, unit=''):
    if v is None:
        return '–'
    if unit == 'kB' and isinstance(v, (int, float)):
        return '%.0f MiB' % (v / 1024.0) if abs(v) >= 10240 else '%.1f MiB' % (v / 1024.0)
    if isinstance(v, int) and unit != 'B':
        return '%d' % v
    if isinstance(v, float) or isinstance(v, int):
        a = abs(v)
        if unit == 'B':
            for u, s in (('GiB', 1 << 30), ('MiB', 1 << 20), ('KiB', 1 << 10)):
                if a >= s:
                    return '%.1f %s' % (v / float(s), u)
            return '%d B' % v
        if a >= 100:
            return '%.0f' % v
        if a >= 10:
            return '%.1f' % v
        return '%.2f' % v
    return str(v)


def table(runs, metric, title, unit='', ratio=True, note=''):
    """One row per cell, one column per mode: value (mode / stock)."""
    by = _by(runs)
    modes = _modes(runs)
    lines = ['### %s' % title, '']
    if note:
        lines += [note, '']
    lines.append('| workload | hosts | link | ' + ' | '.join(modes) + ' |')
    lines.append('|---|---:|---|' + '---:|' * len(modes))
    for w, h, rtt in _cells(runs):
        base = by.get((w, h, rtt, 'stock'))
        bv = _get(base, metric) if base and base.get('status') == 'ok' else None
        row = []
        for m in modes:
            r = by.get((w, h, rtt, m))
            if r is None:
                row.append('')
                continue
            if r.get('status') != 'ok':
                row.append('failed')
                continue
            v = _get(r, metric)
            cell = _num(v, unit)
            if ratio and m != 'stock' and v is not None and bv:
                cell += ' (%.2f)' % (v / float(bv))
            row.append(cell)
        lines.append(
            '| %s | %d | %s | %s |' % (w, h, 'direct' if rtt is None else '%d ms' % rtt, ' | '.join(row))
        )
    lines.append('')
    return lines


def profile_table(runs):
    """Where the controller's Python time goes per mode (py-spy samples of the
    hostname20-pyspy runs), as shares by phase, beside the measured CPU per task of the same
    cell's plain run (py-spy's own sampling distorts absolute figures)."""
    prof = [r for r in runs if r.get('profile') and r.get('status') == 'ok']
    if not prof:
        return []
    modes = _modes(prof)
    by = dict((r['mode'], r) for r in prof)
    plain = dict(
        (r['mode'], r)
        for r in runs
        if r['workload'] == 'hostname20'
        and r['hosts'] == prof[0]['hosts']
        and r.get('rtt_ms') is None
        and r.get('status') == 'ok'
    )

    def share(m, ph):
        p = by[m]['profile']
        total = p['total_ms_per_task'] or 1.0
        return 100.0 * p['per_task_ms'].get(ph, 0) / total

    phases = []
    for r in prof:
        for ph in r['profile']['per_task_ms']:
            if ph not in phases:
                phases.append(ph)
    phases.sort(key=lambda ph: -max(share(m, ph) for m in modes))
    L = [
        '### Where the controller\'s Python time goes (share of py-spy samples)',
        '',
        'hostname20 on %d target(s) under `py-spy record --subprocesses --rate %d` (the '
        'controller\'s Python processes: ansible-playbook and its workers; the spindle daemon '
        'and ssh are not Python and not in it). Each sample goes to the phase of its innermost '
        'recognised frame (`PHASES` in bench/run). py-spy\'s sampling slows the run and counts '
        'some waiting as running, so the shares are the figure to read; the last rows give '
        'the measured controller CPU per task of the same cell without py-spy. Raw stacks: '
        'the `raw` file of each run (collapsed format, for inferno or speedscope).'
        % (prof[0]['hosts'], prof[0]['profile']['rate']),
        '',
        '| phase | ' + ' | '.join(modes) + ' |',
        '|---|' + '---:|' * len(modes),
    ]
    for ph in phases:
        L.append('| %s | %s |' % (ph, ' | '.join('%.0f%%' % share(m, ph) for m in modes)))

    def cpu_per_task(m):
        r = plain.get(m)
        n = r and r.get('task_results')
        return '%.0f ms' % (1000.0 * r['controller']['cpu_s'] / n) if n else '–'

    L.append(
        '| **controller CPU per task, plain run** (all processes: Python, ssh, daemon) | %s |'
        % ' | '.join(cpu_per_task(m) for m in modes)
    )
    L.append('')
    return L


def floor_table(runs):
    """Each mode against Ansible's own per-task cost (the ``floor`` mode: stock Ansible with
    ``debug`` in place of each module task) in the same cell: wall time as a multiple of the
    floor's, and controller CPU per host-task above the floor's (all processes: Ansible,
    ssh, spindle's daemon)."""
    by = _by(runs)
    modes = [m for m in _modes(runs) if m != 'floor']
    cells = [c for c in _cells(runs) if (by.get(c + ('floor',)) or {}).get('status') == 'ok']
    if not cells:
        return []
    L = [
        "### Against the floor (Ansible's own per-task cost, same cell)",
        '',
        'The `floor` mode runs the workload with `debug` in place of each module task (no '
        'remote work). Per mode: wall time / the floor\'s, and controller CPU per host-task '
        'above the floor\'s (ms; all controller processes: Ansible, ssh, the spindle daemon).',
        '',
        '| workload | hosts | floor wall s | floor CPU ms/task | '
        + ' | '.join('%s wall ×floor | %s CPU ms/task above' % (m, m) for m in modes)
        + ' |',
        '|---|---:|---:|---:|' + '---:|---:|' * len(modes),
    ]
    for c in cells:
        f = by[c + ('floor',)]
        n = f.get('task_results') or 0
        if not n:
            continue
        row = ['%.2f' % f['wall_s'], '%.1f' % (1000.0 * f['controller']['cpu_s'] / n)]
        for m in modes:
            r = by.get(c + (m,))
            if not r or r.get('status') != 'ok':
                row += ['–', '–']
                continue
            above = 1000.0 * (r['controller']['cpu_s'] - f['controller']['cpu_s']) / n
            row += ['%.2f' % (r['wall_s'] / f['wall_s']), '%.1f' % above]
        L.append('| %s | %d | %s |' % (c[0], c[1], ' | '.join(row)))
    L.append('')
    return L


def speedup_table(runs):
    by = _by(runs)
    modes = [m for m in _modes(runs) if m != 'stock']
    lines = _table_head('Speed-up over stock (stock wall time / mode wall time; > 1 is faster)', modes)
    for w, h, rtt in _cells(runs):
        base = by.get((w, h, rtt, 'stock'))
        row = []
        for m in modes:
            r = by.get((w, h, rtt, m))
            if not r or not base or r.get('status') != 'ok' or base.get('status') != 'ok':
                row.append('–' if r is None else 'failed' if r.get('status') != 'ok' else '–')
                continue
            row.append('%.1fx' % (base['wall_s'] / r['wall_s']))
        lines.append(
            '| %s | %d | %s | %s |' % (w, h, 'direct' if rtt is None else '%d ms' % rtt, ' | '.join(row))
        )
    lines.append('')
    return lines


def latency_table(runs):
    lines = [
        '### Per-task latency (ms, per host and task: start to result; skipped results left out)',
        '',
        '| workload | hosts | link | mode | n | p50 | p90 | p99 | max |',
        '|---|---:|---|---|---:|---:|---:|---:|---:|',
    ]
    by = _by(runs)
    for w, h, rtt in _cells(runs):
        for m in _modes(runs):
            r = by.get((w, h, rtt, m))
            if not r or r.get('status') != 'ok' or not r.get('latency_ms'):
                continue
            L = r['latency_ms']
            lines.append(
                '| %s | %d | %s | %s | %d | %s | %s | %s | %s |'
                % (w, h, _link(r), m, L['n'], _num(L['p50']), _num(L['p90']), _num(L['p99']), _num(L['max']))
            )
    lines.append('')
    return lines


def spindle_table(runs):
    rows = [r for r in runs if r['mode'] == 'spindle' and r.get('spindle')]
    if not rows:
        return []
    lines = [
        '### spindle daemon counters (`stats` op, read by the bench callback at the end of the playbook)',
        '',
        '| workload | hosts | link | in-agent share | calls | round trips / task | frames / task | connects | daemon CPU s | daemon peak RSS |',
        '|---|---:|---|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for r in sorted(
        rows, key=lambda r: (r.get('rtt_ms') is not None, r['workload'], r['hosts'], r.get('rtt_ms') or 0)
    ):
        s = r['spindle']
        share = s.get('in_agent_share')
        share = '–' if share is None else '%.0f%%' % (100.0 * share)
        if (s.get('paths') or {}).get('stock_reasons'):
            share += ' (stock: %s)' % '; '.join(
                '%s: %d' % kv for kv in sorted(s['paths']['stock_reasons'].items())
            )
        lines.append(
            '| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |'
            % (
                r['workload'],
                r['hosts'],
                _link(r),
                share,
                _num(s.get('calls')),
                _num(s.get('round_trips_per_task')),
                _num(s.get('frames_per_task')),
                _num(s.get('connects')),
                _num(s.get('daemon_cpu_s_at_end')),
                _num((s.get('daemon_peak_rss_kb') or 0) * 1024, 'B') if s.get('daemon_peak_rss_kb') else '–',
            )
        )
    lines.append('')
    return lines


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
