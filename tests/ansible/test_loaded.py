"""A loaded controller does not turn slow hosts into UNREACHABLE (issue 13, item 3).

30 netns sshd targets (SPINDLE_LOADED_HOSTS: the issue's 60 takes twice as long, so `make
test` runs 30; 60 was run and passed, see the closing note), forks = hosts, and busy loops
on every core for the whole test (load
well above the core count: every ssh login, every Python start, every agent bootstrap is
slow). The same small play (facts, ping, command) runs with stock Ansible and with Ansible
through spindle (README lines, Ansible's default ``timeout`` of 10 s): every host must end
the same way under both, and none UNREACHABLE. Before spindle applied ``timeout`` as stock
does (ssh's ConnectTimeout) and gave the agent's start its own period that progress
restarts, most hosts failed here with "no agent answer within the 10 s connect timeout".
The per-host outcome and both wall times are printed.
"""

import multiprocessing
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest

import readme_setup as rs

FLEET_NAME = 'load'
HOSTS = int(os.environ.get('SPINDLE_LOADED_HOSTS') or 30)
HOGS_PER_CORE = 3

PLAY = '''
- hosts: all
  gather_facts: true
  gather_subset: [min]
  tasks:
    - ping:
    - command: hostname
'''


def recap(out):
    """{host: (ok, changed, unreachable, failed)} from a PLAY RECAP."""
    hosts = {}
    for m in re.finditer(
        r'^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)', out, re.M
    ):
        hosts[m.group(1)] = tuple(int(m.group(i)) for i in range(2, 6))
    return hosts


def hog():
    os.nice(0)
    while True:
        pass


class Loaded(unittest.TestCase):
    def setUp(self):
        self.inventory = rs.fleet_up(FLEET_NAME, HOSTS)
        self.addCleanup(rs.fleet_down, FLEET_NAME)
        self.work = tempfile.mkdtemp(prefix='spindle-loaded-')
        self.addCleanup(shutil.rmtree, self.work, True)

    def run_play(self, kind):
        work = os.path.join(self.work, kind)
        os.makedirs(work)
        common = ['host_key_checking = False', 'forks = %d' % HOSTS]
        if kind == 'spindle':
            rs.write_cfg(work, *common)
        else:
            with open(os.path.join(work, 'ansible.cfg'), 'w') as f:
                f.write('[defaults]\n' + '\n'.join(common) + '\n')
        rs.inventory(self.inventory, os.path.join(work, 'inventory.ini'))
        with open(os.path.join(work, 'play.yml'), 'w') as f:
            f.write(PLAY)
        t0 = time.monotonic()
        p = subprocess.run(
            [os.path.join(rs.VENV_BIN, 'ansible-playbook'), '-i', 'inventory.ini', 'play.yml'],
            cwd=work,
            env=rs.env(work),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        return p, time.monotonic() - t0

    def test_same_outcome_as_stock_under_load(self):
        hogs = [
            multiprocessing.Process(target=hog, daemon=True)
            for _ in range(HOGS_PER_CORE * (os.cpu_count() or 1))
        ]
        for h in hogs:
            h.start()
        try:
            time.sleep(2)
            load = os.getloadavg()[0]
            stock, t_stock = self.run_play('stock')
            spindle, t_spindle = self.run_play('spindle')
            load = max(load, os.getloadavg()[0])
        finally:
            for h in hogs:
                h.terminate()
            for h in hogs:
                h.join()
        a, b = recap(stock.stdout), recap(spindle.stdout)
        print(
            'load %.1f; stock %.1f s, spindle %.1f s; unreachable: stock %d, spindle %d'
            % (
                load,
                t_stock,
                t_spindle,
                sum(1 for v in a.values() if v[2]),
                sum(1 for v in b.values() if v[2]),
            )
        )
        self.assertEqual(len(a), HOSTS, stock.stdout[-3000:])
        self.assertEqual(
            a, b, 'per-host outcome differs:\nstock %s\nspindle %s\n%s' % (a, b, spindle.stdout[-3000:])
        )
        self.assertFalse([h for h, v in b.items() if v[2]], spindle.stdout[-3000:])


if __name__ == '__main__':
    unittest.main()
