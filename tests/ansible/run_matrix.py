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
            p, took = run(
                [
                    py,
                    os.path.join(HERE, 'run_conformance.py'),
                    '--strategy',
                    'linear',
                    '--name',
                    'm' + core.replace('.', ''),
                ],
                env,
            )
            ok = p.returncode == 0
            results.append('%s (%.0f s)' % ('pass' if ok else 'FAIL', took))
            if not ok:
                failed = True
                print(p.stdout[-4000:])
        rows.append(['ansible-core %s' % version[0], 'Python %s' % version[1]] + results)
        print('matrix: %s done' % core, flush=True)
    head = (
        ['ansible-core', 'controller']
        + list(SUITES)
        + ([] if args.no_conformance else ['conformance (linear pair)'])
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
