"""bench/report_tables.py: the tables of a bench/run report (bench/report.py writes them): the
results by cell and mode, repeated runs merged into medians (``bench/run --repeat``), and
one markdown table per figure."""

import json
import os
import statistics


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
