#!/usr/bin/env python3
"""bench/capacity.py: a capacity model fitted to bench/run results (the `spindle capacity`
subcommand will wrap this).  The model and its derivation are in docs/capacity.md.

    bench/capacity.py [--results DIR ...] --hosts N --tasks T [--rtt MS] [--forks F]
                      [--mode MODE] [--workload hostname|mixed|bigcopy|manyfiles] [--json]
    bench/capacity.py [--results DIR ...] --validate      # fit on the smaller fleets, predict the
                                                          # largest, write capacity.json and a plot
    bench/capacity.py [--results DIR ...] --show          # the fitted coefficients

Without --results it reads the newest bench/results/* directory with 3+ fleet sizes (else
the newest one, else the committed bench/reports/default-*).

Model, per (mode, workload family) (hostname20 and hostname100 are one family: the same task):

    waves     = ceil(hosts / forks)
    wall  [s] = s0 + s_rtt*RTT + tasks * waves * (a + b*min(hosts, forks) + r*RTT)
                (and at least cpu / cores: --cores, default the measuring machine's)
    cpu   [s] = c0 + c_host*hosts + c_task*tasks*hosts           (controller, user+sys)
    mem  [kB] = m0 + m_host*min(hosts, forks)                    (peak RSS sum of the tree)
    bytes     = w_host*hosts + w_task*tasks*hosts                 (both directions)

fitted by least squares with non-negative coefficients (a feature whose coefficient would be
negative is dropped and the rest refitted), on every successful run of that family.
"""

import argparse
import glob
import json
import math
import os
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

FAMILY = {'hostname20': 'hostname', 'hostname100': 'hostname'}
MODES = ['stock', 'stock-nopipe', 'mitogen', 'spindle']


def family(workload):
    return FAMILY.get(workload, workload)


# -- tiny linear algebra ------------------------------------------------------------------------

def _solve(A, b):
    """Solve A x = b (square) by Gaussian elimination with partial pivoting; None if singular."""
    n = len(A)
    M = [list(map(float, A[i])) + [float(b[i])] for i in range(n)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(M[r][c]))
        if abs(M[p][c]) < 1e-9:
            return None
        M[c], M[p] = M[p], M[c]
        for r in range(n):
            if r != c:
                f = M[r][c] / M[c][c]
                for k in range(c, n + 1):
                    M[r][k] -= f * M[c][k]
    return [M[i][n] / M[i][i] for i in range(n)]


def _lstsq(X, y, cols):
    """Least squares on the given columns (scaled to unit max first); None if the columns
    are (nearly) linearly dependent on these data."""
    scale = [max(abs(row[j]) for row in X) or 1.0 for j in cols]
    Z = [[row[j] / s for j, s in zip(cols, scale)] for row in X]
    k = len(cols)
    A = [[sum(z[a] * z[b] for z in Z) for b in range(k)] for a in range(k)]
    b = [sum(z[a] * yy for z, yy in zip(Z, y)) for a in range(k)]
    sol = _solve(A, b)
    if sol is None:
        return None
    return [v / s for v, s in zip(sol, scale)]


def nnls(X, y, names, priority=None):
    """Least squares with coefficients >= 0.  Features enter in priority order and only if
    the data can tell them apart from those already in (otherwise the system is singular,
    e.g. setup vs per-task time when every run has the same task count); then, while a
    coefficient is negative, the most negative feature is dropped and the rest refitted.
    Returns {name: coefficient} (0 for features left out)."""
    order = [names.index(n) for n in (priority or names)]
    active = []
    for j in order:
        if not any(abs(row[j]) > 0 for row in X) or len(active) + 1 > len(X):
            continue
        if _lstsq(X, y, active + [j]) is not None:
            active.append(j)
    while active:
        sol = _lstsq(X, y, active)
        if sol is None:   # cannot happen after the forward pass, but stay safe
            active = active[:-1]
            continue
        worst = min(range(len(sol)), key=lambda i: sol[i])
        if sol[worst] < 0:
            del active[worst]
            continue
        coef = {n: 0.0 for n in names}
        for j, v in zip(active, sol):
            coef[names[j]] = v
        return coef
    return {n: 0.0 for n in names}


# -- data ---------------------------------------------------------------------------------------

def newest_results():
    """The newest bench/results/* with 3+ fleet sizes, else the newest at all, else the
    committed bench/reports/default-* (the figures in bench/README.md)."""
    for pattern in (os.path.join(BENCH, 'results', '*'), os.path.join(BENCH, 'reports', 'default-*')):
        dirs = sorted((d for d in glob.glob(pattern) if os.path.exists(os.path.join(d, 'results.json'))),
                      key=os.path.getmtime)
        if not dirs:
            continue
        for d in reversed(dirs):
            try:
                with open(os.path.join(d, 'results.json')) as f:
                    if len(set(r['hosts'] for r in json.load(f)['runs'])) >= 3:
                        return [d]
            except (OSError, ValueError, KeyError):
                continue
        return dirs[-1:]
    return []


def load_runs(dirs):
    runs = []
    for d in dirs:
        if os.path.exists(os.path.join(d, 'results.json')):
            with open(os.path.join(d, 'results.json')) as f:
                rs = json.load(f)['runs']
        else:   # a suite still running, or interrupted: its per-run files
            rs = []
            for p in sorted(glob.glob(os.path.join(d, 'runs', '*.json'))):
                with open(p) as f:
                    rs.append(json.load(f))
        for r in rs:
            if r.get('status') == 'ok' and r.get('tasks_per_host'):
                r = dict(r)
                r['_dir'] = d
                runs.append(r)
    return runs


def _tasks(r):
    return float(r['tasks_per_host'])


def _rtt(r):
    return float(r.get('rtt_ms') or 0.0) / 1000.0


def _waves(r):
    return math.ceil(r['hosts'] / float(r.get('forks') or r['hosts']))


def _eff(r):
    return float(min(r['hosts'], r.get('forks') or r['hosts']))


WALL = ['s0', 's_rtt', 'a', 'b', 'r']
CPU = ['c0', 'c_host', 'c_task']
MEM = ['m0', 'm_host']
BYTES = ['w_host', 'w_task']


def features(r):
    T, R, W, E, H = _tasks(r), _rtt(r), _waves(r), _eff(r), float(r['hosts'])
    return {
        'wall': [1.0, R, T * W, T * W * E, T * W * R],
        'cpu': [1.0, H, T * H],
        'mem': [1.0, E],
        'bytes': [H, T * H],
    }


def fit(runs):
    """{(mode, family): {'wall': coef, 'cpu': coef, 'mem': coef, 'bytes': coef, 'n': runs}}"""
    groups = {}
    for r in runs:
        groups.setdefault((r['mode'], family(r['workload'])), []).append(r)
    model = {}
    for key, rs in groups.items():
        f = [features(r) for r in rs]
        m = {'n': len(rs), 'hosts': sorted(set(r['hosts'] for r in rs)),
             'rtts': sorted(set(r.get('rtt_ms') or 0 for r in rs))}
        m['wall'] = nnls([x['wall'] for x in f], [r['wall_s'] for r in rs], WALL, ['a', 'b', 'r', 's0', 's_rtt'])
        m['cpu'] = nnls([x['cpu'] for x in f], [r['controller']['cpu_s'] for r in rs], CPU, ['c_task', 'c_host', 'c0'])
        mem_rs = [(x, r) for x, r in zip(f, rs) if r['controller'].get('peak_rss_tree_kb')]
        m['mem'] = nnls([x['mem'] for x, _ in mem_rs], [r['controller']['peak_rss_tree_kb'] for _, r in mem_rs], MEM)
        by_rs = [(x, r) for x, r in zip(f, rs) if (r.get('wire') or {}).get('bytes_total') is not None]
        m['bytes'] = nnls([x['bytes'] for x, _ in by_rs], [r['wire']['bytes_total'] for _, r in by_rs], BYTES,
                          ['w_task', 'w_host'])
        model[key] = m
    return model


def predict(m, hosts, tasks, rtt_ms=0.0, forks=None, cores=None):
    """The model's figures for one query.  With cores, the wall time is at least the
    controller CPU divided by the cores (a controller cannot go faster than its CPUs)."""
    forks = forks or hosts
    R = rtt_ms / 1000.0
    W = math.ceil(hosts / float(forks))
    E = float(min(hosts, forks))
    w, c, me, by = m['wall'], m['cpu'], m['mem'], m['bytes']
    wall = w['s0'] + w['s_rtt'] * R + tasks * W * (w['a'] + w['b'] * E + w['r'] * R)
    cpu = c['c0'] + c['c_host'] * hosts + c['c_task'] * tasks * hosts
    mem = me['m0'] + me['m_host'] * E
    nbytes = by['w_host'] * hosts + by['w_task'] * tasks * hosts
    cpu_bound = bool(cores) and cpu / cores > wall
    if cpu_bound:
        wall = cpu / cores
    return {'wall_s': wall, 'cpu_bound': cpu_bound, 'controller_cpu_s': cpu, 'controller_mem_kb': mem, 'bytes': nbytes,
            'bandwidth_mbit_s': nbytes * 8 / 1e6 / wall if wall > 0 else None,
            'per_task_s': W * (w['a'] + w['b'] * E + w['r'] * R)}


# -- validation ---------------------------------------------------------------------------------

def validate(dirs_or_dir, plotdir=None):
    """Fit on every fleet size but the largest direct one, predict the largest: writes
    capacity.json beside the (first) results and a predicted-vs-measured plot."""
    dirs = [dirs_or_dir] if isinstance(dirs_or_dir, str) else list(dirs_or_dir)
    runs = load_runs(dirs)
    sizes = sorted(set(r['hosts'] for r in runs if r.get('rtt_ms') is None))
    if len(sizes) < 3:
        raise ValueError('need at least 3 fleet sizes to hold one back (have %s)' % sizes)
    held = sizes[-1]
    fit_runs = [r for r in runs if r['hosts'] < held]
    test = [r for r in runs if r['hosts'] == held and r.get('rtt_ms') is None]
    model = fit(fit_runs)
    cores = None
    try:
        with open(os.path.join(dirs[0], 'results.json')) as f:
            cores = json.load(f)['meta']['machine']['cpus']
    except (OSError, ValueError, KeyError):
        pass
    rows = []
    for r in test:
        m = model.get((r['mode'], family(r['workload'])))
        if not m:
            continue
        p = predict(m, r['hosts'], _tasks(r), 0.0, r.get('forks'), cores)
        rows.append({'cpu_bound': p['cpu_bound'],'mode': r['mode'], 'workload': r['workload'], 'hosts': r['hosts'],
                     'measured_s': r['wall_s'], 'predicted_s': round(p['wall_s'], 2),
                     'error_pct': round(100.0 * (p['wall_s'] - r['wall_s']) / r['wall_s'], 1),
                     'measured_cpu_s': r['controller']['cpu_s'], 'predicted_cpu_s': round(p['controller_cpu_s'], 2),
                     'cpu_error_pct': round(100.0 * (p['controller_cpu_s'] - r['controller']['cpu_s'])
                                            / max(1e-9, r['controller']['cpu_s']), 1)})
    # in-sample fit quality too (all sizes used for fitting)
    full = fit(runs)
    insample = []
    for r in runs:
        m = full.get((r['mode'], family(r['workload'])))
        p = predict(m, r['hosts'], _tasks(r), (r.get('rtt_ms') or 0.0), r.get('forks'))
        insample.append(abs(p['wall_s'] - r['wall_s']) / r['wall_s'] * 100.0)
    out = {'fit_sizes': sorted(set(r['hosts'] for r in fit_runs)), 'held_out': held, 'cores': cores,
           'validation': rows,
           'mean_abs_error_pct': round(sum(abs(x['error_pct']) for x in rows) / len(rows), 1) if rows else None,
           'in_sample_mean_abs_error_pct': round(sum(insample) / len(insample), 1) if insample else None,
           'model': {'%s/%s' % k: v for k, v in full.items()}}
    with open(os.path.join(dirs[0], 'capacity.json'), 'w') as f:
        json.dump(out, f, indent=1, sort_keys=True)
    if plotdir:
        import svgplot
        os.makedirs(plotdir, exist_ok=True)
        series = {}
        for x in rows:
            series.setdefault('%s %s' % (x['mode'], family(x['workload'])), []).append((x['measured_s'], x['predicted_s']))
        allv = [v for s in series.values() for p in s for v in p] or [1.0]
        lo, hi = min(allv) * 0.8, max(allv) * 1.2
        series['predicted = measured'] = [(lo, lo), (hi, hi)]
        svgplot.line_chart(os.path.join(plotdir, 'capacity-predicted-vs-measured.svg'), series,
                           'capacity model: predicted vs measured wall time, %d targets (fit on %s)'
                           % (held, out['fit_sizes']), 'measured (s)', 'predicted (s)', logx=True, logy=True,
                           dashed=('predicted = measured',),
                           markers_only=tuple(k for k in series if k != 'predicted = measured'))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--results', action='append', help='a bench/run results directory (repeatable)')
    ap.add_argument('--hosts', type=int)
    ap.add_argument('--tasks', type=int)
    ap.add_argument('--rtt', type=float, default=0.0, help='round-trip time, ms')
    ap.add_argument('--forks', type=int, help='Ansible forks (default: = hosts)')
    ap.add_argument('--cores', type=int, help='controller cores: wall >= controller CPU / cores '
                    '(default: the cores of the machine the results come from)')
    ap.add_argument('--mode', help='one mode (default: every fitted mode)')
    ap.add_argument('--workload', default='hostname', help='workload family to model (default hostname)')
    ap.add_argument('--json', action='store_true')
    ap.add_argument('--validate', action='store_true')
    ap.add_argument('--show', action='store_true')
    a = ap.parse_args(argv)
    dirs = a.results or newest_results()
    if not dirs:
        ap.error('no results: run bench/run first, or pass --results DIR')
    if a.validate:
        out = validate(dirs, os.path.join(dirs[0], 'plots'))
        if a.json:
            print(json.dumps(out, indent=1))
        else:
            print('fit on fleet sizes %s, predicting %d targets:' % (out['fit_sizes'], out['held_out']))
            print('%-13s %-12s %6s %11s %11s %7s' % ('mode', 'workload', 'hosts', 'measured s', 'predicted s', 'error'))
            for x in out['validation']:
                print('%-13s %-12s %6d %11.1f %11.1f %+6.0f%%' % (x['mode'], x['workload'], x['hosts'],
                                                                x['measured_s'], x['predicted_s'], x['error_pct']))
            print('mean |error| %s%%; in-sample (all sizes) mean |error| %s%%'
                  % (out['mean_abs_error_pct'], out['in_sample_mean_abs_error_pct']))
            print('wrote %s and %s' % (os.path.join(dirs[0], 'capacity.json'),
                                       os.path.join(dirs[0], 'plots', 'capacity-predicted-vs-measured.svg')))
        return 0
    model = fit(load_runs(dirs))
    cores = a.cores
    if cores is None:
        try:
            with open(os.path.join(dirs[0], 'results.json')) as f:
                cores = json.load(f)['meta']['machine']['cpus']
        except (OSError, ValueError, KeyError):
            cores = os.cpu_count()
    if a.show:
        for (mode, fam), m in sorted(model.items()):
            print('%s/%s (n=%d, hosts %s, rtts %s)' % (mode, fam, m['n'], m['hosts'], m['rtts']))
            for part in ('wall', 'cpu', 'mem', 'bytes'):
                print('   %-5s %s' % (part, '  '.join('%s=%.4g' % kv for kv in m[part].items())))
        return 0
    if not a.hosts or not a.tasks:
        ap.error('--hosts and --tasks are required (or --validate / --show)')
    rows = []
    for (mode, fam), m in sorted(model.items(), key=lambda kv: (MODES.index(kv[0][0]) if kv[0][0] in MODES else 9, kv[0][1])):
        if fam != a.workload or (a.mode and mode != a.mode):
            continue
        p = predict(m, a.hosts, a.tasks, a.rtt, a.forks, cores)
        p.update({'mode': mode, 'workload': fam, 'fitted_on_hosts': m['hosts'], 'fitted_on_rtts_ms': m['rtts']})
        rows.append(p)
    if not rows:
        print('no fitted model for workload %r%s' % (a.workload, ' mode %s' % a.mode if a.mode else ''), file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps({'query': {'hosts': a.hosts, 'tasks': a.tasks, 'rtt_ms': a.rtt, 'forks': a.forks or a.hosts},
                          'predictions': rows, 'results': dirs}, indent=1))
        return 0
    print('%d hosts x %d tasks (%s), RTT %g ms, forks %d, %s controller cores; fitted on %s'
          % (a.hosts, a.tasks, a.workload, a.rtt, a.forks or a.hosts, cores, ', '.join(dirs)))
    print('%-13s %10s %12s %10s %12s %10s' % ('mode', 'wall s', 'ctl CPU s', 'mem MiB', 'bytes MiB', 'Mbit/s'))
    for p in rows:
        print('%-13s %10.1f %12.1f %10.1f %12.1f %10.2f%s' % (
            p['mode'], p['wall_s'], p['controller_cpu_s'], p['controller_mem_kb'] / 1024.0,
            p['bytes'] / 1048576.0, p['bandwidth_mbit_s'] or 0, '  (CPU-bound)' if p['cpu_bound'] else ''))
    far = [p['mode'] for p in rows if a.hosts > 2 * max(p['fitted_on_hosts'])]
    if far:
        print('note: %d hosts is far beyond the fleet sizes fitted (%s): an extrapolation'
              % (a.hosts, max(rows[0]['fitted_on_hosts'])))
    return 0


if __name__ == '__main__':
    sys.exit(main())
