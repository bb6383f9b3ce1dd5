"""The modes (stock, stock-nopipe, Mitogen, spindle, floor): what each needs installed and the environment its runs get."""

import datetime
import os
import shutil

from spindle_bench.config import ANSIBLE_CORE, ROOT, STOCK_VENV
from spindle_bench.util import log

# ------------------------------------------------------------------------------ modes


class Mode(object):
    def __init__(self, name, ctl):
        self.name = name
        self.ctl = ctl
        self.available = False
        self.reason = None
        self.venv = STOCK_VENV
        self.python = ctl.stock_python
        self.playbook_bin = ctl.stock_playbook
        self.env = {}
        self.info = {}


def setup_stock(m, pipelining):
    if not m.ctl.can_exec(m.playbook_bin):
        m.reason = '%s not found (%s)' % (
            m.playbook_bin,
            'run scripts/venv.sh' if m.ctl.kind == 'host' else 'in the controller image',
        )
        return m
    m.env = {'ANSIBLE_PIPELINING': 'True' if pipelining else 'False'}
    m.info = {
        'strategy': 'linear',
        'connection': 'ssh',
        'pipelining': pipelining,
        'ssh_args': "ansible's default (-C -o ControlMaster=auto -o ControlPersist=60s)",
    }
    m.available = True
    return m


def setup_mitogen(m, allow_install, logdir):
    ctl = m.ctl
    venv = m.venv = ctl.mitogen_venv
    py = m.python = os.path.join(venv, 'bin', 'python')
    m.playbook_bin = os.path.join(venv, 'bin', 'ansible-playbook')
    probe = [
        py,
        '-c',
        'import ansible_mitogen, ansible, mitogen, os; '
        'print(os.path.dirname(ansible_mitogen.__file__)); print(ansible.__version__); '
        'print(".".join(map(str, mitogen.__version__)))',
    ]
    p = ctl.run_quiet(probe) if ctl.can_exec(py) else None
    rel = os.path.relpath(venv, ROOT)
    if (p is None or p.returncode != 0) and allow_install:
        log(
            'installing Mitogen into %s (ansible-core==%s mitogen%s) ...'
            % (rel, ANSIBLE_CORE, ', in the controller container' if ctl.kind == 'container' else '')
        )
        with open(os.path.join(logdir, 'mitogen-install.log'), 'w') as lf:
            ok = ctl.run_logged([ctl.venv_python, '-m', 'venv', venv], lf) == 0
            ok = (
                ok
                and ctl.run_logged(
                    [
                        os.path.join(venv, 'bin', 'pip'),
                        'install',
                        '-q',
                        'ansible-core==%s' % ANSIBLE_CORE,
                        'mitogen',
                    ],
                    lf,
                )
                == 0
            )
        p = ctl.run_quiet(probe) if ok else None
    if p is None or p.returncode != 0:
        m.reason = (
            'Mitogen is not installed in %s and installing it failed (pip from PyPI%s; see '
            'logs/mitogen-install.log)'
            % (rel, ' in the controller container' if ctl.kind == 'container' else '')
            if allow_install
            else 'Mitogen is not installed in %s (--no-install)' % rel
        )
        return m
    pkg, ansible_ver, mitogen_ver = p.stdout.split()[:3]
    m.env = {
        'ANSIBLE_STRATEGY_PLUGINS': os.path.join(pkg, 'plugins', 'strategy'),
        'ANSIBLE_STRATEGY': 'mitogen_linear',
    }
    m.info = {'strategy': 'mitogen_linear', 'mitogen': mitogen_ver, 'ansible_core': ansible_ver}
    m.available = True
    return m


def _tree_sha(path):
    import hashlib

    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(path)):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        for fn in sorted(files):
            if fn.endswith('.pyc'):
                continue
            h.update(os.path.relpath(os.path.join(dirpath, fn), path).encode())
            with open(os.path.join(dirpath, fn), 'rb') as f:
                h.update(f.read())
    return h.hexdigest()[:12]


def _file_sha(path):
    import hashlib

    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()[:12]


def setup_spindle(m, spindle_bin, plugin_from, snapdir):
    """The spindle mode runs a snapshot, taken now, of the plugin package and of the binary:
    other people rebuild and reinstall both while a suite runs, and every spindle run of a
    suite must use the same code."""
    ctl = m.ctl
    m.info = {'strategy': 'linear', 'route': 'the spindle callback (the README lines)', 'pipelining': True}
    if not ctl.can_exec(m.playbook_bin):
        m.reason = '%s not found (%s)' % (
            m.playbook_bin,
            'run scripts/venv.sh' if ctl.kind == 'host' else 'in the controller image',
        )
        return m
    if not (spindle_bin and os.access(spindle_bin, os.X_OK)):
        m.reason = 'no spindle binary at %s (cargo build --release, or --spindle-bin)' % spindle_bin
        return m
    py = m.python
    src = os.path.join(ROOT, 'ansible_plugin', 'spindle_ansible')
    p = ctl.run_quiet(
        [
            py,
            '-c',
            'import os, spindle_ansible.plugins.strategy as s, spindle_ansible as p; '
            'print(os.path.dirname(p.__file__))',
        ],
        cwd='/',
    )
    installed = p.stdout.strip() if p.returncode == 0 else None
    if plugin_from == 'source' or (plugin_from == 'auto' and not installed):
        pkg, where = src, 'source tree %s' % src
    elif not installed:
        m.reason = 'spindle_ansible is not installed for %s (.venv/bin/pip install ./ansible_plugin)' % py
        return m
    elif ctl.kind == 'container':
        pkg, where = None, 'installed in the controller image (%s)' % installed
    else:
        pkg, where = installed, 'installed in %s' % m.venv
    snap_py = os.path.join(snapdir, 'py')
    try:
        if pkg:  # else the controller image's own copy, used as it is
            shutil.copytree(
                pkg,
                os.path.join(snap_py, 'spindle_ansible'),
                ignore=shutil.ignore_patterns('__pycache__', '*.pyc'),
            )
        snap_bin = os.path.join(snapdir, 'spindle')
        shutil.copy2(spindle_bin, snap_bin)
    except OSError as e:
        m.reason = 'cannot snapshot the plugin or binary: %s' % e
        return m
    env = {'PYTHONDONTWRITEBYTECODE': '1'}
    if pkg:
        env['PYTHONPATH'] = m.env['PYTHONPATH'] = snap_py
        # Bytecode, as pip writes it when it installs the wheel (and as Ansible's and Mitogen's
        # installed files have it): without it, a controller whose environment sets
        # PYTHONDONTWRITEBYTECODE compiles the plugin in every run (~50 ms that no installed
        # copy pays, measured on the first ping).
        c = ctl.run_quiet([py, '-m', 'compileall', '-q', snap_py], cwd='/')
        if c.returncode != 0:
            m.reason = 'cannot compile the plugin snapshot: %s' % (c.stdout + c.stderr).strip()[-300:]
            return m
    p = ctl.run_quiet([py, '-m', 'spindle_ansible'], env=env, cwd='/')
    if p.returncode != 0:
        m.reason = '`python -m spindle_ansible` failed: %s' % (p.stderr.strip().splitlines() or ['?'])[-1]
        return m
    # The lines a user puts in ansible.cfg (README), as environment variables: the spindle
    # callback under Ansible's own linear strategy. callbacks_enabled gains the bench's
    # bench_timer (the runner adds the bench's callback directory before this one).
    for line in p.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith((';', '#', '[')) or '=' not in line:
            continue
        k, v = [x.strip() for x in line.split('=', 1)]
        if k == 'callbacks_enabled':
            v = ','.join(['bench_timer'] + [c.strip() for c in v.split(',') if c.strip()])
        m.env['ANSIBLE_' + k.upper()] = v
    if 'spindle' not in m.env.get('ANSIBLE_CALLBACKS_ENABLED', '').split(','):
        m.reason = '`python -m spindle_ansible` printed no callbacks_enabled = spindle line'
        return m
    # Pipelining as for `stock`, so the two differ only in the connection. spindle runs module
    # tasks in the agent either way (issue 12, item 0; the conformance suite runs with
    # pipelining off and on); with it on, Ansible's own action code takes the same path it
    # takes in the stock mode.
    m.env['ANSIBLE_PIPELINING'] = 'True'
    m.env['SPINDLE_BIN'] = snap_bin
    # the bench's per-run output path must not make each run a new persistent daemon (warm1)
    m.env['SPINDLE_PERSIST_IGNORE_ENV'] = 'BENCH_TIMER_OUT'
    st = os.stat(spindle_bin)
    m.info.update(
        {
            'plugin': where
            + (' (snapshot, sha256 %s)' % _tree_sha(os.path.join(snap_py, 'spindle_ansible')) if pkg else ''),
            'spindle_bin': '%s (snapshot, sha256 %s)' % (spindle_bin, _file_sha(snap_bin)),
            'spindle_bin_mtime': datetime.datetime.fromtimestamp(st.st_mtime).isoformat(timespec='seconds'),
        }
    )
    m.available = True
    return m
