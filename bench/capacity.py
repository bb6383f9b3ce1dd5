#!/usr/bin/env python3
"""bench/capacity.py: the capacity model through `spindle capacity`, which is its one
implementation (src/capacity/; the model is in docs/capacity.md).  This script adds what the
bench harness needs around it: finding the newest results and the binary, writing
DIR/capacity.json and the predicted-vs-measured plot.

    bench/capacity.py [--results DIR ...] --hosts N --tasks T [--rtt MS] [--forks F] [--mode M]
                      [--workload hostname|mixed|bigcopy|...] [--cores C] [--separate-targets] [--json]
    bench/capacity.py [--results DIR ...] --validate [--hold-out HOSTS]   # + capacity.json, plot
    bench/capacity.py [--results DIR ...] --show                          # the fitted coefficients

Every option but --results/--spindle-bin goes to `spindle capacity` unchanged (`spindle
capacity --help`).  Without --results it reads the newest bench/results/* directory with 3+
fleet sizes (else the newest one, else the committed bench/reports/default-*).  The binary
is --spindle-bin, else $SPINDLE_BIN, else the newer of target/release/spindle and
target/debug/spindle.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)


class CapacityError(Exception):
    pass


def find_spindle(explicit=None):
    if explicit:
        return explicit
    if os.environ.get('SPINDLE_BIN'):
        return os.environ['SPINDLE_BIN']
    found = [
        p
        for p in (os.path.join(ROOT, 'target', t, 'spindle') for t in ('release', 'debug'))
        if os.access(p, os.X_OK)
    ]
    if not found:
        raise CapacityError('no spindle binary (cargo build, or --spindle-bin / SPINDLE_BIN)')
    return max(found, key=os.path.getmtime)


def newest_results():
    """The newest bench/results/* with 3+ fleet sizes, else the newest at all, else the
    committed bench/reports/default-* (the figures in bench/README.md)."""
    for pattern in (os.path.join(BENCH, 'results', '*'), os.path.join(BENCH, 'reports', 'default-*')):
        dirs = sorted(
            (d for d in glob.glob(pattern) if os.path.exists(os.path.join(d, 'results.json'))),
            key=os.path.getmtime,
        )
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


def spindle_capacity(dirs, args, spindle=None):
    """Runs `spindle capacity --results DIR... ARGS`; its stdout, or CapacityError."""
    argv = [find_spindle(spindle), 'capacity']
    for d in dirs:
        argv += ['--results', d]
    p = subprocess.run(
        argv + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True
    )
    if p.returncode != 0:
        raise CapacityError('%s: %s' % (' '.join(argv[:2]), (p.stderr or p.stdout).strip()))
    return p.stdout


def validate(dirs_or_dir, plotdir=None, hold_out=None, spindle=None):
    """Fit on the smaller fleets, predict the largest (or hold_out): writes capacity.json
    beside the (first) results and, with plotdir, a predicted-vs-measured plot."""
    dirs = [dirs_or_dir] if isinstance(dirs_or_dir, str) else list(dirs_or_dir)
    extra = ['--validate', '--json'] + (['--hold-out', str(hold_out)] if hold_out else [])
    out = json.loads(spindle_capacity(dirs, extra, spindle))
    with open(os.path.join(dirs[0], 'capacity.json'), 'w') as f:
        json.dump(out, f, indent=1, sort_keys=True)
    if plotdir:
        import svgplot

        os.makedirs(plotdir, exist_ok=True)
        series = {}
        for x in out['validation']:
            series.setdefault('%s %s' % (x['mode'], x['workload']), []).append(
                (x['measured_s'], x['predicted_s'])
            )
        allv = [v for s in series.values() for p in s for v in p] or [1.0]
        lo, hi = min(allv) * 0.8, max(allv) * 1.2
        series['predicted = measured'] = [(lo, lo), (hi, hi)]
        svgplot.line_chart(
            os.path.join(plotdir, 'capacity-predicted-vs-measured.svg'),
            series,
            'capacity model: predicted vs measured wall time, %d targets (fit on %s)'
            % (out['held_out'], out['fit_sizes']),
            'measured (s)',
            'predicted (s)',
            logx=True,
            logy=True,
            dashed=('predicted = measured',),
            markers_only=tuple(k for k in series if k != 'predicted = measured'),
        )
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument('--results', action='append', help='a bench/run results directory (repeatable)')
    ap.add_argument('--spindle-bin', help='the spindle binary')
    ap.add_argument('--validate', action='store_true')
    ap.add_argument('--hold-out', type=int)
    ap.add_argument('--json', action='store_true')
    a, rest = ap.parse_known_args(argv)
    dirs = a.results or newest_results()
    if not dirs:
        ap.error('no results: run bench/run first, or pass --results DIR')
    try:
        if a.validate:
            out = validate(dirs, os.path.join(dirs[0], 'plots'), a.hold_out, a.spindle_bin)
            if a.json:
                print(json.dumps(out, indent=1))
            else:
                extra = ['--validate'] + (['--hold-out', str(a.hold_out)] if a.hold_out else [])
                sys.stdout.write(spindle_capacity(dirs, extra + rest, a.spindle_bin))
                print(
                    'wrote %s and %s'
                    % (
                        os.path.join(dirs[0], 'capacity.json'),
                        os.path.join(dirs[0], 'plots', 'capacity-predicted-vs-measured.svg'),
                    )
                )
            return 0
        sys.stdout.write(spindle_capacity(dirs, rest + (['--json'] if a.json else []), a.spindle_bin))
        return 0
    except CapacityError as e:
        print('capacity: %s' % e, file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
