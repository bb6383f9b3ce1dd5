#!/usr/bin/env python3
"""The ansible-core version matrix: the field suites (test_interpreters, test_field_cases,
test_clis: module execution under the resolved interpreter with pipelining at Ansible's
default, become and its failures, copy/template and delegation, raw on a terminal, every
CLI) and the conformance playbook's linear pair (stock vs spindle through the callback:
modules, become, copy/template, fetch, check/diff, async, handlers...) run against each
ansible-core of the matrix venvs (scripts/matrix.sh; the main .venv is 2.19 and runs
everything in make test-ansible), each on its own controller Python. Prints, and writes to
target/matrix.md, a table of what passed. Exit 1 if anything failed; 77 if no venv.

    python3 tests/ansible/run_matrix.py [--no-conformance]
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SUITES = ('test_interpreters', 'test_field_cases', 'test_clis')
# The target Pythons each ansible-core supports (its module support matrix): the conformance
# run puts the oldest and the newest of them found here on two of its three targets.
TARGET_PYTHONS = {
    '2.18': ('3.8', '3.13'),
    '2.19': ('3.8', '3.13'),
    '2.20': ('3.9', '3.14'),
    '2.21': ('3.9', '3.14'),
}
PYENV = os.path.join(os.environ.get('PYENV_ROOT') or os.path.expanduser('~root/.pyenv'), 'versions')


def _pyenv_python(minor):
    """pyenv's pythonX.Y (a netns target sees root's pyenv versions), or None."""
    for d in sorted(os.listdir(PYENV)) if os.path.isdir(PYENV) else ():
        exe = os.path.join(PYENV, d, 'bin', 'python' + minor)
        if (d == minor or d.startswith(minor + '.')) and os.access(exe, os.X_OK):
            return exe
    return None


def target_pythons(core):
    """(oldest, newest) interpreter paths of ``core``'s supported target Pythons found here:
    the oldest supported one there is, and the newest (or the newest here under it)."""
    lo, hi = TARGET_PYTHONS.get('.'.join(core.split('.')[:2]), ('3.8', '3.13'))
    minors = ['3.%d' % n for n in range(int(lo.split('.')[1]), int(hi.split('.')[1]) + 1)]
    found = [(m, _pyenv_python(m)) for m in minors]
    found = [(m, p) for m, p in found if p]
    if not found:
        return []
    return [found[0][1], found[-1][1]] if len(found) > 1 else [found[0][1]]


def venvs():
    path = os.path.join(REPO, '.venv-matrix.txt')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def run(argv, env):
    t0 = time.monotonic()
    p = subprocess.run(
        argv, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True
    )
    return p, time.monotonic() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--no-conformance', action='store_true')
    args = ap.parse_args(argv)
    cells = venvs()
    if not cells:
        print('SKIP: no matrix venvs (scripts/matrix.sh)')
        return 77
    rows, failed = [], False
    for core, venv in cells:
        venv = os.path.join(REPO, venv)
        py = os.path.join(venv, 'bin', 'python')
        version = subprocess.run(
            [
                py,
                '-c',
                'import ansible.release as r, platform; print(r.__version__, platform.python_version())',
            ],
            stdout=subprocess.PIPE,
            universal_newlines=True,
        ).stdout.split()
        env = dict(os.environ, SPINDLE_VENV=venv)
        results = []
        for suite in SUITES:
            p, took = run([py, '-m', 'unittest', suite], env)
            ok = p.returncode == 0
            tail = p.stdout.strip().splitlines()[-1:] or ['']
            results.append('%s (%.0f s)' % ('pass' if ok else 'FAIL: ' + tail[0], took))
            if not ok:
                failed = True
                print(p.stdout[-4000:])
        if not args.no_conformance:
            pythons = target_pythons(version[0])
            argv = [
                py,
                os.path.join(HERE, 'run_conformance.py'),
                '--strategy',
                'linear',
                '--name',
                'm' + core.replace('.', ''),
            ]
            if pythons:
                argv += ['--target-pythons', ','.join(pythons)]
            p, took = run(argv, env)
            ok = p.returncode == 0
            names = ', '.join(os.path.basename(x) for x in pythons) or 'none here'
            results.append('%s (%.0f s; targets: %s + discovered)' % ('pass' if ok else 'FAIL', took, names))
            if not ok:
                failed = True
                print(p.stdout[-4000:])
        rows.append(['ansible-core %s' % version[0], 'Python %s' % version[1]] + results)
        print('matrix: %s done' % core, flush=True)
    head = (
        ['ansible-core', 'controller']
        + list(SUITES)
        + ([] if args.no_conformance else ['conformance (linear pair; target Pythons)'])
    )
    table = ['| %s |' % ' | '.join(head), '|' + '---|' * len(head)]
    table += ['| %s |' % ' | '.join(r) for r in rows]
    text = '\n'.join(table) + '\n'
    print(text)
    os.makedirs(os.path.join(REPO, 'target'), exist_ok=True)
    with open(os.path.join(REPO, 'target', 'matrix.md'), 'w') as f:
        f.write(text)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
