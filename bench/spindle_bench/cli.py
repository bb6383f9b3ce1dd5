"""The command line: a suite over its fleets and modes, the report and the check."""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time

import report  # noqa: E402  (bench/report.py, on sys.path by bench/run)

from spindle_bench.config import (
    ALL_MODES,
    BENCH,
    CONTAINERS_CONF,
    DEFAULT_CONTROLLER_IMAGE,
    FLOOR_BOOKS,
    PODMAN_FLEET_DIR,
    ROOT,
    SUITES,
    WARM_CELLS,
    WORKLOADS,
    cell_tuple,
    modes_for_cell,
)
from spindle_bench.controllers import ContainerController, ControllerUnavailable, HostController
from spindle_bench.fleets import ComposeFleet, FleetUnavailable, NetnsFleet, PodmanFleet
from spindle_bench.links import LinkEmu
from spindle_bench.measure import PYSPY, exec_controller, line_rate, make_payloads
from spindle_bench.modes import Mode, setup_mitogen, setup_spindle, setup_stock
from spindle_bench.runner import Runner
from spindle_bench.util import tail
from spindle_bench.util import Progress, fmt_s, log, set_subreaper

# ------------------------------------------------------------------------------ suite


def plan(args):
    if args.suite == 'custom':
        wls = args.workloads.split(',') if args.workloads else ['hostname20']
        sizes = [int(x) for x in (args.sizes or '1').split(',')]
        cells = [(w, h, None) for h in sizes for w in wls]
        if args.rtts:
            rtts = [int(x) for x in args.rtts.split(',')]
            rsizes = [int(x) for x in (args.rtt_sizes or str(sizes[0])).split(',')]
            cells += [(wls[0], h, r) for h in rsizes for r in rtts]
        return [cell_tuple(c) for c in cells]
    return [cell_tuple(c) for c in SUITES[args.suite]['cells']]


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog='bench/run',
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    ap.add_argument('--suite', choices=sorted(SUITES) + ['custom'], default='quick')
    ap.add_argument('--out', help='results directory (default bench/results/<timestamp>)')
    ap.add_argument(
        '--fleet',
        choices=['netns', 'podman', 'compose'],
        default='netns',
        help='netns: network namespaces (containers/netns-fleet.sh); podman: podman containers '
        'with sshd on podman\'s bridge (containers/podman-fleet.sh); compose: untested',
    )
    ap.add_argument(
        '--fleet-prefix',
        default='bn',
        help='fleet names are PREFIX1, PREFIX2, ... (netns, podman: PREFIX matches [a-z0-9]{1,4})',
    )
    ap.add_argument(
        '--controller',
        choices=['host', 'container'],
        default='host',
        help='where ansible-playbook runs: here, or in a podman container from --controller-image '
        '(needs --fleet podman)',
    )
    ap.add_argument(
        '--controller-image',
        default=DEFAULT_CONTROLLER_IMAGE,
        help='the controller container\'s image (default: spindle\'s execution environment, '
        'built by containers/ee/build-ee.sh when missing)',
    )
    ap.add_argument('--exec-controller', metavar='SPEC', help=argparse.SUPPRESS)
    ap.add_argument('--modes', help='comma list from %s (default: all)' % ','.join(ALL_MODES))
    ap.add_argument('--workloads', help='custom suite: comma list of %s' % ','.join(WORKLOADS))
    ap.add_argument('--sizes', help='custom suite: fleet sizes, e.g. 1,10')
    ap.add_argument('--rtts', help='custom suite: RTTs (ms) for the first workload')
    ap.add_argument('--rtt-sizes', help='custom suite: fleet sizes for the RTT runs')
    ap.add_argument(
        '--rate-mbit', type=float, default=0.0, help='bandwidth cap for the linkemu runs (0: none)'
    )
    ap.add_argument(
        '--forks', type=int, default=0, help='Ansible forks (default: the fleet size, at most 50)'
    )
    ap.add_argument(
        '--spindle-bin',
        default=os.environ.get('SPINDLE_BIN', os.path.join(ROOT, 'target', 'release', 'spindle')),
    )
    ap.add_argument(
        '--spindle-plugin',
        choices=['auto', 'installed', 'source'],
        default='auto',
        help='auto: the copy installed in .venv if any, else the source tree via PYTHONPATH',
    )
    ap.add_argument('--no-install', action='store_true', help='do not pip install Mitogen')
    ap.add_argument('--run-timeout', type=float, default=1200.0, help='seconds per ansible-playbook run')
    ap.add_argument(
        '--profile',
        action='store_true',
        help='also run hostname20 on one target under py-spy per mode: the controller CPU '
        'by phase (report table, raw stacks in logs/)',
    )
    ap.add_argument(
        '--repeat',
        type=int,
        default=1,
        help='run each cell N times, the modes interleaved (run 1 of every mode, then run 2, ...); '
        'the report shows the median of each figure and its spread (default 1)',
    )
    ap.add_argument('--check', action='store_true', help='after the suite, verify the outputs; exit 0/1')
    ap.add_argument('--require-modes', help='with --check: comma list of modes that must not be skipped')
    ap.add_argument('--verify', metavar='DIR', help='only verify an existing results directory; exit 0/1')
    ap.add_argument('--list', action='store_true', help='print the suites and exit')
    args = ap.parse_args(argv)
    if args.exec_controller:  # inside the controller container (ContainerController.execute)
        return exec_controller(args.exec_controller)

    if args.list:
        for name, s in SUITES.items():
            print('%s: %s' % (name, s['about']))
            for c in s['cells']:
                w, h, r, ms = cell_tuple(c)
                print(
                    '   %-11s hosts=%-3d %s%s'
                    % (
                        w,
                        h,
                        'direct' if r is None else 'rtt=%dms' % r,
                        '' if not ms else '  modes=' + ','.join(ms),
                    )
                )
        return 0
    if args.verify:
        problems = report.verify(args.verify)
        for p in problems:
            print('check: FAIL %s' % p)
        print('check: %s (%s)' % ('ok' if not problems else 'FAILED', args.verify))
        return 1 if problems else 0

    if args.controller == 'container' and args.fleet != 'podman':
        ap.error('--controller container needs --fleet podman (the controller joins the podman bridge)')
    if not 1 <= args.repeat <= 20:
        ap.error('--repeat must be 1 to 20')
    if args.controller == 'container' and args.profile:
        ap.error('--profile runs py-spy on the host controller only')
    if args.profile and PYSPY is None:
        ap.error('--profile needs py-spy: not on PATH nor in .venv/bin (make venv installs it)')
    if args.fleet in ('netns', 'podman') and not re.match(r'^[a-z0-9]{1,4}$', args.fleet_prefix):
        ap.error('--fleet-prefix must match [a-z0-9]{1,4} (fleet names are PREFIX1, PREFIX2, ...)')
    if args.fleet == 'podman' or args.controller == 'container':
        os.environ.setdefault('CONTAINERS_CONF', CONTAINERS_CONF)  # runc, no default ulimits
    share = tempfile.mkdtemp(prefix='spb-')  # short: ssh ControlPath must fit 108 bytes
    out = args.out or os.path.join(BENCH, 'results', datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
    out = os.path.abspath(out)
    if args.controller == 'container':
        ctl = ContainerController(args.controller_image, args.fleet_prefix, share, out)
    else:
        ctl = HostController()
    try:
        return run_suite(args, ap, ctl, share, out)
    finally:
        try:
            ctl.stop()
        finally:
            shutil.rmtree(share, ignore_errors=True)


def skip_now(args, why):
    """Nothing can run here (no podman, not root, no image): SKIP, exit 0 with --check, else 77."""
    log('SKIP: %s' % why)
    if args.check:
        print('check: SKIP (%s)' % why)
        return 0
    return 77


def run_suite(args, ap, ctl, share, out):
    def _interrupt(signum, frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    if args.fleet == 'podman' or ctl.kind == 'container':
        if os.geteuid() != 0:
            return skip_now(
                args, 'the podman fleet needs root (rootful podman: bridge addresses reachable from here)'
            )
        if not shutil.which('podman'):
            return skip_now(args, 'podman is not installed (scripts/setup.sh installs it)')
    os.makedirs(os.path.join(out, 'logs'), exist_ok=True)
    try:
        ctl.start()
    except ControllerUnavailable as e:
        return skip_now(args, 'controller container: %s' % e)
    args.fleet_measure = True
    progress = Progress()
    t_start = time.monotonic()
    subreaper = set_subreaper(True) and set_subreaper(False)
    if not subreaper:
        log('warning: cannot become a child subreaper: CPU of detached ssh masters is not counted')

    modes_wanted = args.modes.split(',') if args.modes else list(ALL_MODES)
    bad = [m for m in modes_wanted if m not in ALL_MODES]
    if bad:
        ap.error('unknown mode(s): %s' % ','.join(bad))
    cells = plan(args)
    log('suite %s: %d cells, modes %s; results in %s' % (args.suite, len(cells), ','.join(modes_wanted), out))

    modes, cleanup_dirs = setup_modes(args, ctl, share, out, modes_wanted)

    runner = Runner(args, out, progress, ctl, share)
    runner.payloads = make_payloads()
    meta = {
        'suite': args.suite,
        'repeat': args.repeat,
        'fleet': args.fleet,
        'controller': ctl.info(),
        'started': datetime.datetime.now().isoformat(timespec='seconds'),
        'machine': {
            'cpus': os.cpu_count(),
            'kernel': platform.release(),
            'python': platform.python_version(),
            'loadavg_start': os.getloadavg(),
        },
        'subreaper': subreaper,
        'cells': cells,
        'modes': {},
        'notes': [],
    }
    ClsFleet = {'netns': NetnsFleet, 'podman': PodmanFleet, 'compose': ComposeFleet}[args.fleet]
    sizes = []
    for c in cells:
        if c[1] not in sizes:
            sizes.append(c[1])
    progress.total = planned_runs(args, cells, modes, modes_wanted)
    fleets_used = []
    interrupted = False
    exit_code = 0
    probed = False
    try:
        for k, size in enumerate(sizes):
            name = '%s%d' % (args.fleet_prefix, k + 1)
            if args.fleet == 'netns':
                name = free_fleet_name(args.fleet_prefix, k + 1, '/run/spindle-fleet/.state')
            elif args.fleet == 'podman':
                name = free_fleet_name(args.fleet_prefix, k + 1, PODMAN_FLEET_DIR + '/.state')
            fleet = ClsFleet(name, size, os.path.join(out, 'logs'))
            progress.note('fleet %s: bringing up %d target(s) (%s)' % (name, size, args.fleet))
            fleets_used.append(fleet)
            inv = fleet.up()
            progress.note('fleet %s: up in %.1fs: %s' % (name, fleet.up_s, inv))
            if 'fleet_info' not in meta:
                meta['fleet_info'] = fleet.info()
            if args.fleet == 'compose':
                args.fleet_measure = True
            if not probed:
                probed = True
                probe_modes(runner, modes, fleet, inv, progress, meta, out)
                # recount now that probes may have removed modes
                progress.total = progress.n + planned_runs(args, cells, modes, modes_wanted)
            forks = args.forks or min(size, 50)
            size_cells = [c for c in cells if c[1] == size]
            for cell in size_cells:
                run_cell(args, runner, modes, modes_wanted, cell, fleet, inv, forks, meta, progress)
            if args.profile and k == 0:
                for mn in [m for m in modes_wanted if modes[m].available and m != 'floor']:
                    runner.run(
                        modes[mn], 'hostname20-pyspy', fleet, inv, size, None, {'kind': 'direct'}, forks
                    )
            fleet.down()
            fleets_used.remove(fleet)
            progress.note('fleet %s: down' % name)
    except FleetUnavailable as e:
        log('SKIP: %s' % e)
        meta['notes'].append('fleet unavailable: %s' % e)
        exit_code = 77
    except KeyboardInterrupt:
        interrupted = True
        log('interrupted: tearing down')
        exit_code = 130
    finally:
        for f in fleets_used:
            try:
                f.down()
            except Exception as e:  # pragma: no cover
                log('fleet %s down failed: %s' % (f.name, e))
        for d in cleanup_dirs:
            shutil.rmtree(d, ignore_errors=True)

    return finish_suite(args, out, meta, modes, runner, t_start, exit_code, interrupted)


def free_fleet_name(prefix, k, statedir):
    """PREFIX<k>, or the next number whose fleet does not exist (another harness may run)."""
    n = k
    while os.path.exists('%s/%s%d.env' % (statedir, prefix, n)) and n < k + 50:
        n += 1
    return '%s%d' % (prefix, n)


def probe_modes(runner, modes, fleet, inv, progress, meta, out):
    """Run a one-task playbook with every mode that needs proving (mitogen, spindle)."""
    for name in ('mitogen', 'spindle'):
        m = modes.get(name)
        if not m or not m.available:
            continue
        progress.note('probe: %s (one task on one target) ...' % name)
        ok, logpath = runner.run(
            m, 'probe', fleet, inv, 1, None, {'kind': 'direct'}, 1, playbook='probe.yml', record=False
        )
        if not ok:
            m.available = False
            m.reason = 'the probe play (1 task) failed: %s' % (tail(logpath, 4).replace('\n', ' | ')[:600])
            progress.note('mode %s: SKIPPED: %s (log: %s)' % (name, m.reason, os.path.relpath(logpath, out)))
        else:
            progress.note('probe: %s works' % name)
    # become method, from what the target has (netns targets share the host's filesystem)
    p = fleet.exec(0, ['sh', '-c', 'command -v sudo || command -v su || true'])
    found = p.stdout.strip().splitlines()
    if p.returncode != 0:  # cannot look inside: netns targets share the host's filesystem
        found = [x for x in (shutil.which('sudo'), shutil.which('su')) if x]
    method = None
    if found:
        method = 'sudo' if found[0].endswith('sudo') else 'su'
    runner.extra['bench_become'] = bool(method)
    runner.extra['bench_become_method'] = method or 'su'
    note = (
        ('become: %s (root -> root)' % method)
        if method
        else 'become: neither sudo nor su on the targets: the become task of mixed is skipped'
    )
    meta['become'] = method
    meta['notes'].append(note)
    progress.note(note)


if __name__ == '__main__':
    sys.exit(main())


def setup_modes(args, ctl, share, out, modes_wanted):
    """The wanted modes, each set up (or marked skipped with its reason), and the temporary
    directories they made."""
    modes = {}
    cleanup_dirs = []
    for name in modes_wanted:
        m = Mode(name, ctl)
        if name == 'stock':
            setup_stock(m, True)
        elif name == 'stock-nopipe':
            setup_stock(m, False)
        elif name == 'floor':
            setup_stock(m, True)
            if m.available:
                m.info['runs'] = 'debug in place of each module task (%s only)' % ', '.join(
                    sorted(FLOOR_BOOKS)
                )
        elif name == 'mitogen':
            setup_mitogen(m, not args.no_install, os.path.join(out, 'logs'))
        elif name == 'spindle':
            snapdir = tempfile.mkdtemp(prefix='snap-', dir=share)  # the controller container sees it
            cleanup_dirs.append(snapdir)
            plugin_from = ctl.default_plugin if args.spindle_plugin == 'auto' else args.spindle_plugin
            setup_spindle(m, os.path.abspath(args.spindle_bin), plugin_from, snapdir)
        modes[name] = m
        if not m.available:
            log('mode %s: SKIPPED: %s' % (name, m.reason))
    return modes, cleanup_dirs


def planned_runs(args, cells, modes, modes_wanted):
    """How many ansible-playbook runs the cells (and ``--profile``'s one per mode) still make,
    for the progress counter."""
    n = sum(
        len(modes_for_cell(w, r, ms, modes_wanted, modes)) * (2 if w in WARM_CELLS else 1) * args.repeat
        for w, _h, r, ms in cells
    )
    if args.profile:
        n += len([m for m in modes_wanted if modes[m].available and m != 'floor'])
    return n


def run_cell(args, runner, modes, modes_wanted, cell, fleet, inv, forks, meta, progress):
    """Every mode of one cell on ``fleet``, ``--repeat`` times: a warm pair (cold run, then
    the repeat), a direct run (bigcopy measures the raw line rate first, each time: the runs
    compare with the rate of their moment), or runs through the link emulator."""
    for _ in range(args.repeat):
        _run_cell_once(args, runner, modes, modes_wanted, cell, fleet, inv, forks, meta, progress)


def _run_cell_once(args, runner, modes, modes_wanted, cell, fleet, inv, forks, meta, progress):
    w, h, rtt, ms = cell
    ctl = runner.ctl
    cell_modes = modes_for_cell(w, rtt, ms, modes_wanted, modes)
    if w in WARM_CELLS:
        first, again = WARM_CELLS[w]
        for mn in cell_modes:
            runner.run(modes[mn], first, fleet, inv, h, None, {'kind': 'direct'}, forks, reap=False)
            runner.run(modes[mn], again, fleet, inv, h, None, {'kind': 'direct'}, forks, reap=False)
            runner.ctl.reap_all(runner.known_children)  # the next mode starts cold
    elif rtt is None:
        if w == 'bigcopy':
            lr = line_rate(fleet, h, runner.payloads['big'], ctl)
            if lr:
                runner.line_rates[h] = lr
                meta.setdefault('line_rate', []).append(dict(lr, fleet=fleet.name))
                progress.note(
                    'line rate, raw ssh cat of the bigcopy file to %d target(s): '
                    '%.0f MiB/s' % (h, lr['MiB_per_s'])
                )
        for mn in cell_modes:
            runner.run(modes[mn], w, fleet, inv, h, None, {'kind': 'direct'}, forks)
    else:
        emu = LinkEmu(fleet, rtt, args.rate_mbit, runner.tmp, ctl)
        emu_inv = emu.start()
        runner.known_children.add(emu.proc.pid)
        info = {
            'kind': 'linkemu',
            'rtt_ms': rtt,
            'rate_mbit': args.rate_mbit or None,
            'how': 'bench/linkemu.py on the controller: 127.0.0.1:port_i -> target_i:22, '
            'one-way delay RTT/2 per chunk in each direction (delay queue)',
        }
        try:
            for mn in cell_modes:
                runner.run(modes[mn], w, fleet, emu_inv, h, rtt, info, forks)
        finally:
            st = emu.stop()
            runner.known_children.discard(emu.proc.pid)
            if st:
                meta.setdefault('linkemu', []).append(dict(st, fleet=fleet.name, hosts=h))


def finish_suite(args, out, meta, modes, runner, t_start, exit_code, interrupted):
    """results.json, the capacity model's blind test (3+ fleet sizes), the report, and with
    ``--check`` the verification; the exit code."""
    for name, m in modes.items():
        meta['modes'][name] = {'available': m.available, 'reason': m.reason, 'info': m.info}
    meta['finished'] = datetime.datetime.now().isoformat(timespec='seconds')
    meta['elapsed_s'] = round(time.monotonic() - t_start, 1)
    meta['machine']['loadavg_end'] = os.getloadavg()
    meta['interrupted'] = interrupted
    results = {'meta': meta, 'runs': runner.runs}
    with open(os.path.join(out, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1, sort_keys=True)
    if runner.runs:
        if len(set(r['hosts'] for r in runner.runs if r['link']['kind'] == 'direct')) >= 3:
            try:
                import capacity

                capacity.validate(
                    out,
                    os.path.join(out, 'plots'),
                    spindle=args.spindle_bin if os.access(args.spindle_bin, os.X_OK) else None,
                )
            except Exception as e:
                log('capacity validation failed: %s' % e)
        report.write_report(out)
        log('report: %s' % os.path.join(out, 'report.md'))
    log('done in %s' % fmt_s(time.monotonic() - t_start))

    if args.check:
        if exit_code == 77:
            print('check: SKIP (%s)' % '; '.join(meta['notes']))
            return 0
        problems = report.verify(out)
        required = [n for n in (args.require_modes or '').split(',') if n]
        problems += [
            'mode %s was required but did not run: %s' % (n, modes[n].reason)
            for n in required
            if n in modes and not modes[n].available
        ]
        for p in problems:
            print('check: FAIL %s' % p)
        print('check: %s (%s)' % ('ok' if not problems else 'FAILED', out))
        return 1 if problems or interrupted else 0
    return exit_code
