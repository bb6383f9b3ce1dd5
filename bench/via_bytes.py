#!/usr/bin/env python3
"""Bytes on the controller -> gateway link when Ansible drives 20 web hosts behind a gateway
and two bastions through spindle_via, with the hops' caches on and off.

The topology of tests/ansible/run_conformance.py --bastions (a netns fleet of 23 sshd
targets: t0 -> t1, t2 -> 10 web hosts each, joined by veth pairs, every hop running ssh from
its own namespace). One play on the 20 web hosts (facts, then command, shell, copy, stat,
file, lineinfile) runs through spindle (stock linear + the spindle callback) twice: with the
hops' caches (module code and large files cross each link once) and with
SPINDLE_NO_HOP_CACHE=1 (each target gets its own copy over every link). Prints the bytes sent
on the controller -> gateway link and on the hops' links to their targets for each.

Needs root (network namespaces), sshd and the project venv (scripts/venv.sh).
Usage: bench/via_bytes.py [--spindle-bin PATH]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), 'tests', 'ansible'))
import run_conformance as rc  # noqa: E402  (fleet, links, config and environment helpers)

NAME = 'vbyt'
PLAY = '''- hosts: web
  gather_facts: true
  tasks:
    - command: hostname
    - shell: echo hi | tr a-z A-Z
    - copy: {content: "x\\n", dest: /tmp/via-bytes.txt}
    - stat: {path: /tmp/via-bytes.txt}
    - file: {path: /tmp/via-bytes.txt, state: absent}
    - lineinfile: {path: /tmp/via-bytes2.txt, line: a, create: true}
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--spindle-bin', default=rc.spindle_bin())
    args = ap.parse_args()
    if not os.access(os.path.join(rc.VENV_BIN, 'ansible-playbook'), os.X_OK):
        print('SKIP: no venv at %s (run scripts/venv.sh)' % rc.VENV_BIN)
        return rc.SKIP
    rc.COUNT = 23
    work = tempfile.mkdtemp(prefix='via-bytes-')
    try:
        try:
            inv = rc.fleet('up', NAME, rc.COUNT).stdout.strip().splitlines()[-1]
        except rc.Skip as e:
            print('SKIP: %s' % e)
            return rc.SKIP
        with open(os.path.join(os.path.dirname(inv), 'hosts.txt')) as f:
            ips = f.read().split()
        hops = dict((i, 0) for i in (1, 2))
        hops.update((i, 1 if i < 13 else 2) for i in range(3, rc.COUNT))
        for i, hop in sorted(hops.items()):
            rc.link(NAME, hop, ips[hop], i, ips[i])
        via = os.path.join(work, 'via.ini')
        with open(via, 'w') as f:
            f.write('[fleet]\n' + ''.join('t%d spindle_via=t%d\n' % kv for kv in sorted(hops.items())))
            f.write('[web]\n' + ''.join('t%d\n' % i for i in range(3, rc.COUNT)))
        play = os.path.join(work, 'play.yml')
        with open(play, 'w') as f:
            f.write(PLAY)
        for k, caches in enumerate((True, False)):
            label = 'hop caches on' if caches else 'hop caches off'
            print('%s: running...' % label, flush=True)
            cfg = os.path.join(work, 'spindle.cfg')
            rc.write_cfg(cfg, 'spindle', 'linear')
            env = rc.run_env(work, cfg, os.path.join(work, 'record-%d.json' % k))
            env['SPINDLE_BIN'] = args.spindle_bin
            env['XDG_RUNTIME_DIR'] = os.path.join(work, 'run-%d' % k)  # a daemon per run
            os.makedirs(env['XDG_RUNTIME_DIR'], mode=0o700)
            if not caches:
                env['SPINDLE_NO_HOP_CACHE'] = '1'
            before = rc.link_bytes(NAME, hops)
            t0 = time.monotonic()
            p = subprocess.run(
                [os.path.join(rc.VENV_BIN, 'ansible-playbook'), play, '-i', inv, '-i', via],
                env=env,
                cwd=work,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                universal_newlines=True,
            )
            took = time.monotonic() - t0
            gw, down = [b - a for a, b in zip(before, rc.link_bytes(NAME, hops))]
            print(
                '%s: rc %d, %.1f s; controller -> gateway %d bytes, hops -> their targets %d '
                'bytes' % (label, p.returncode, took, gw, down),
                flush=True,
            )
            subprocess.run(['pkill', '-f', env['XDG_RUNTIME_DIR']])
            if p.returncode:
                print(p.stdout[-4000:])
                return 1
        return 0
    finally:
        rc.fleet('down', NAME, check=False)
        subprocess.run(['rm', '-rf', work])


if __name__ == '__main__':
    sys.exit(main())
