"""Warm across runs: the plugin's persistent per-user daemon (like ssh's ControlPersist).

With only the lines ``python -m spindle_ansible`` prints, a second ``ansible-playbook`` finds
the first run's daemon and its live agents (no new connection, module code cached); the
daemon exits ``SPINDLE_PERSIST`` seconds after the last run (0: a private daemon per run); a
changed environment gets a fresh daemon; the stock-path warning comes again in every run; a
host whose stream died between runs (its sshd and network namespace replaced, as a reboot
would) is reconnected without an error; a daemon directory that is not ours is refused.
Real sshd targets (netns fleet ``prst``), real ansible-playbook.
"""

import glob
import json
import os
import shutil
import tempfile
import time
import unittest

import readme_setup as rs

FLEET_NAME = 'prst'

PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - ping:
    - command: hostname
      changed_when: false
"""


class Persist(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.inventory = rs.fleet_up(FLEET_NAME, 2)

    @classmethod
    def tearDownClass(cls):
        rs.fleet_down(FLEET_NAME)

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix='spindle-persist-')
        self.run_dir = os.path.join(self.work, 'run')
        os.mkdir(self.run_dir, 0o700)
        rs.write_cfg(self.work, 'host_key_checking = False', 'inventory = %s' % self.inventory)
        with open(os.path.join(self.work, 'site.yml'), 'w') as f:
            f.write(PLAYBOOK)
        self.addCleanup(shutil.rmtree, self.work, True)
        self.addCleanup(self.stop)

    def env(self, **extra):
        env = rs.env(self.work)
        env['XDG_RUNTIME_DIR'] = self.run_dir  # this test's daemons only
        env.update(extra)
        return env

    def stop(self):
        rs.run([os.path.join(rs.VENV_BIN, 'python'), '-m', 'spindle_ansible', '--stop'], env=self.env())

    def playbook(self, *args, **env):
        p = rs.run(
            [os.path.join(rs.VENV_BIN, 'ansible-playbook'), 'site.yml', '-vv'] + list(args),
            cwd=self.work,
            env=self.env(**env),
        )
        self.assertEqual(p.returncode, 0, p.stdout[-3000:])
        return p.stdout

    def sockets(self):
        return sorted(glob.glob(os.path.join(self.run_dir, 'spindle-%d' % os.getuid(), '*', 'sock')))

    def stats(self, sock):
        p = rs.run([rs.BIN, 'stats', '--socket', sock])
        self.assertEqual(p.returncode, 0, p.stdout)
        return json.loads(p.stdout)

    def test_a_second_run_attaches_to_the_live_agents(self):
        out = self.playbook()
        self.assertIn('started daemon pid', out)
        socks = self.sockets()
        self.assertEqual(len(socks), 1, socks)
        first = self.stats(socks[0])
        self.assertEqual(first['counters']['connects'], 2, first['counters'])
        self.assertEqual(rs.paths(self.work)['in_agent'], 4)
        out = self.playbook()
        self.assertIn('attached to the running daemon', out)
        self.assertEqual(self.sockets(), socks)
        second = self.stats(socks[0])
        self.assertEqual(second['counters']['connects'], 2, 'no new connection')
        self.assertEqual(rs.paths(self.work)['in_agent'], 4)
        self.assertGreater(second['counters']['calls'], first['counters']['calls'])

    def test_idle_exit_and_persist_zero(self):
        self.playbook(SPINDLE_PERSIST='2')
        socks = self.sockets()
        self.assertEqual(len(socks), 1)
        deadline = time.monotonic() + 15
        while os.path.exists(socks[0]) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertFalse(os.path.exists(socks[0]), 'the daemon did not exit when idle')
        self.playbook(SPINDLE_PERSIST='0')
        self.assertEqual(self.sockets(), [])
        left = [n for n in os.listdir(self.run_dir) if not n.startswith('spindle-%d' % os.getuid())]
        self.assertEqual(left, [], 'the private daemon left its directory')
        p = rs.run(
            [os.path.join(rs.VENV_BIN, 'ansible-playbook'), 'site.yml'],
            cwd=self.work,
            env=self.env(SPINDLE_PERSIST='soon'),
        )
        self.assertIn(
            "spindle is NOT active for this play: it runs on Ansible's stock "
            "connections. spindle: SPINDLE_PERSIST='soon': must be whole seconds",
            p.stdout,
        )

    def test_a_changed_environment_gets_a_fresh_daemon(self):
        self.playbook()
        self.playbook(SPINDLE_TEST_CHANGED='1')
        self.assertEqual(len(self.sockets()), 2)
        self.playbook(PWD='/elsewhere', ANSIBLE_FORKS='3')  # volatile and Ansible's own: same
        self.assertEqual(len(self.sockets()), 2)
        for i in range(2):  # named in SPINDLE_PERSIST_IGNORE_ENV: left out of the key
            self.playbook(
                SPINDLE_TEST_CHANGED='1', JOB_LOG='/tmp/job-%d.log' % i, SPINDLE_PERSIST_IGNORE_ENV='JOB_LOG'
            )
        self.assertEqual(len(self.sockets()), 2, 'the second daemon served both')

    def test_the_stock_path_warning_comes_in_every_run(self):
        for _ in range(2):
            out = self.playbook(ANSIBLE_KEEP_REMOTE_FILES='1')
            self.assertIn("on Ansible's stock command path", out)
            self.assertEqual(len(self.sockets()), 1)

    def test_a_host_replaced_between_runs_is_reconnected(self):
        self.playbook()
        sock = self.sockets()[0]
        # The targets' sshd and network namespaces are replaced (new kernels' view: the old
        # TCP connections are unknown there, as after a reboot).
        rs.fleet_down(FLEET_NAME)
        type(self).inventory = rs.fleet_up(FLEET_NAME, 2)
        out = self.playbook()
        self.assertIn('attached to the running daemon', out)
        s = self.stats(sock)
        self.assertEqual(s['counters']['connects'], 4, 'both hosts reconnected: %s' % s['counters'])
        self.assertEqual(rs.paths(self.work)['in_agent'], 4)

    def test_a_daemon_directory_that_is_not_private_is_refused(self):
        d = os.path.join(self.run_dir, 'spindle-%d' % os.getuid())
        os.mkdir(d, 0o755)
        p = rs.run([os.path.join(rs.VENV_BIN, 'ansible-playbook'), 'site.yml'], cwd=self.work, env=self.env())
        self.assertIn('spindle is NOT active for this play', p.stdout)
        self.assertIn('refusing %s: owned by uid %d with mode 0755' % (d, os.getuid()), p.stdout)
        self.assertIsNone(rs.paths(self.work))
        os.chmod(d, 0o700)
        self.playbook()


if __name__ == '__main__':
    unittest.main()
