"""Paths and versions, and what the harness runs: the modes, the workloads (playbooks) and the suites (cells of workload, fleet size and link)."""

import os

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCH)


FLEET_SH = os.path.join(ROOT, 'containers', 'netns-fleet.sh')
PODMAN_FLEET_SH = os.path.join(ROOT, 'containers', 'podman-fleet.sh')
PODMAN_FLEET_DIR = '/run/spindle-podman'
CONTAINERS_CONF = os.path.join(ROOT, 'containers', 'containers.conf')
DEFAULT_CONTROLLER_IMAGE = 'localhost/spindle-ee:latest'
PLAYBOOKS = os.path.join(BENCH, 'playbooks')
CACHE = os.path.join(BENCH, '.cache')
STOCK_VENV = os.environ.get('BENCH_STOCK_VENV', os.path.join(ROOT, '.venv'))
MITOGEN_VENV = os.path.join(BENCH, '.venv-mitogen')
MITOGEN_VENV_EE = os.path.join(BENCH, '.venv-mitogen-ee')  # made by the controller container's Python
ANSIBLE_CORE = '2.19.14'
TICK = os.sysconf('SC_CLK_TCK')
PAGE_KB = os.sysconf('SC_PAGE_SIZE') // 1024
ALL_MODES = ['stock', 'stock-nopipe', 'mitogen', 'spindle', 'floor']
#: The ``floor`` mode: stock Ansible running ``debug`` where the workload runs a module (same
#: number of tasks, no remote work): Ansible's own per-task cost, against which the report
#: puts each mode's wall time and controller CPU per task (issue 12). Only these workloads,
#: on a direct link, have one.
FLOOR_BOOKS = {'hostname100': 'hostname100-floor.yml', 'hostname20': 'hostname20-floor.yml'}


def modes_for_cell(workload, rtt, only, wanted, modes):
    """The available modes a cell runs, in order (``only``: the cell's own list, or None)."""
    return [
        m
        for m in wanted
        if modes[m].available
        and (only is None or m in only)
        and (m != 'floor' or (workload in FLOOR_BOOKS and rtt is None))
    ]


# ------------------------------------------------------------------------------ suites
# A cell is (workload, hosts, rtt_ms or None for the direct link).  Every available mode
# runs every cell, back to back on the same fleet, unless the cell lists its modes.
WORKLOADS = {
    # name: (playbook, extra vars it needs: filled in by make_payloads)
    'hostname100': ('hostname100.yml', {}),
    'hostname20': ('hostname20.yml', {}),
    # hostname20 run under py-spy (--profile): the controller's CPU by phase, per mode
    'hostname20-pyspy': ('hostname20.yml', {}),
    'mixed': ('mixed.yml', {}),
    'bigcopy': ('bigcopy.yml', {'bench_big_file': 'big'}),
    'manyfiles': ('manyfiles.yml', {'bench_many_dir': 'many1000'}),
    'manyfiles100': ('manyfiles.yml', {'bench_many_dir': 'many100'}),
    # ping1: one ping on one host, the smallest run. The `warm1` cell runs it twice per mode
    # without clearing anything in between (ssh ControlPersist masters, spindle's persistent
    # daemon): `ping1-first` is the cold run, `ping1-again` the repeat a user makes next.
    'ping1-first': ('ping1.yml', {}),
    'ping1-again': ('ping1.yml', {}),
}
#: cells that run a cold run then a repeated one per mode (see `ping1` above)
WARM_CELLS = {'warm1': ('ping1-first', 'ping1-again')}

NO_NOPIPE = ['stock', 'mitogen', 'spindle']
SUITES = {
    'quick': {
        'about': 'hostname20 on 1 and 3 targets, mixed on 3, hostname20 at RTT 0 and 50 ms on 1 '
        'target; every available mode. About 5 minutes on this (busy) 2-core machine.',
        'cells': [
            ('hostname20', 1, None),
            ('hostname20', 3, None),
            ('mixed', 3, None),
            ('warm1', 1, None),
            ('hostname20', 1, 0),
            ('hostname20', 1, 50),
        ],
    },
    'default': {
        'about': 'what fits in about 30 minutes on this 2-core machine (see bench/README.md, '
        '"What the default suite leaves out"): hostname100 on 1 target; hostname20 on 1, '
        '10, 50; mixed and bigcopy on 1 and 10; manyfiles100 (100 files) on 1; '
        'hostname20 at RTT 0/10/50/150 ms on 1 and 10 targets without stock-nopipe.',
        'cells': [
            ('hostname100', 1, None),
            ('hostname20', 1, None),
            ('mixed', 1, None),
            ('bigcopy', 1, None),
            ('manyfiles100', 1, None),
        ]
        + [('hostname20', h, r, NO_NOPIPE) for r in (0, 10, 50, 150) for h in (1,)]
        + [('hostname20', 10, None), ('mixed', 10, None), ('bigcopy', 10, None)]
        + [('hostname20', 10, r, NO_NOPIPE) for r in (0, 10, 50, 150)]
        + [('hostname20', 50, None)],
    },
    'floor': {
        'about': 'the controller against Ansible\'s own per-task cost, in one run: hostname100, '
        'hostname20, bigcopy (with the raw line rate) and warm1 on 1 target, hostname20 on 50; '
        'every mode and the debug floor. About 8 minutes on a quiet 2-core machine.',
        'cells': [
            ('hostname100', 1, None),
            ('hostname20', 1, None),
            ('bigcopy', 1, None),
            ('warm1', 1, None),
            ('hostname20', 50, None),
        ],
    },
    'full': {
        'about': 'the whole matrix: hostname100, mixed on 1, 10, 50, 100; bigcopy on 1, 10, 50; '
        'manyfiles (1,000 files) on 1 and 10; hostname100 at RTT 0/10/50/150 ms on 1 and 10 '
        'targets; every mode everywhere. Hours on a 2-core machine: for bigger ones.',
        'cells': [(w, h, None) for h in (1, 10, 50, 100) for w in ('hostname100', 'mixed')]
        + [('bigcopy', h, None) for h in (1, 10, 50)]
        + [('manyfiles', h, None) for h in (1, 10)]
        + [('hostname100', h, r) for h in (1, 10) for r in (0, 10, 50, 150)],
    },
}


def cell_tuple(c):
    return (c[0], c[1], c[2], list(c[3]) if len(c) > 3 else None)
