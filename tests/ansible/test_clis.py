"""Every Ansible CLI goes through spindle with only the lines ``python -m spindle_ansible``
prints: ``ansible`` (ad-hoc), ``ansible-playbook``, ``ansible-console`` and ``ansible-pull``.
Each runs a module on a real sshd target (netns fleet; ansible-pull: on the controller itself,
connection local, from a local git repository), and the run's module path counts (written by
the ``spindle`` callback) must show it ran in an agent. Without ``bin_ansible_callbacks`` the
ad-hoc CLI loads no callback and runs stock ssh: checked too, so the printed lines keep it.
"""

import os
import shutil
import subprocess
import tempfile
import unittest

import readme_setup as rs

FLEET_NAME = 'clis'


def run(argv, work, **kw):
    return subprocess.run(
        argv,
        cwd=work,
        env=rs.env(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        universal_newlines=True,
        **kw,
    )


#: A team's own ansible.cfg, before spindle (inventory path to fill in).
TEAM_CFG = """# the team's settings
[defaults]
inventory = %s
host_key_checking = False
callback_plugins = ./callbacks
callbacks_enabled = team   ; ours

[ssh_connection]
pipelining = False
"""

TEAM_CALLBACK = """
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'team'
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_stats(self, stats):
        self._display.display('TEAM-CALLBACK-RAN')
"""


class Clis(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.inventory = rs.fleet_up(FLEET_NAME, 1)

    @classmethod
    def tearDownClass(cls):
        rs.fleet_down(FLEET_NAME)

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix='spindle-clis-')
        self.addCleanup(shutil.rmtree, self.work, True)
        rs.write_cfg(self.work, 'host_key_checking = False', 'inventory = %s' % self.inventory)

    def assert_in_agent(self, out, at_least=1):
        paths = rs.paths(self.work)
        self.assertIsNotNone(paths, 'no module path counts: spindle was not active\n' + out)
        self.assertGreaterEqual(paths['in_agent'], at_least, (paths, out))
        self.assertEqual(paths['stock'], 0, (paths, out))

    def test_adhoc(self):
        p = run(['ansible', 't0', '-m', 'command', '-a', 'hostname'], self.work)
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn('CHANGED', p.stdout)
        self.assert_in_agent(p.stdout)

    def test_adhoc_without_bin_ansible_callbacks_is_stock(self):
        # What the printed line is for: ad-hoc loads no enabled callback without it.
        cfg = os.path.join(self.work, 'ansible.cfg')
        with open(cfg) as f:
            text = f.read().replace('bin_ansible_callbacks = True', '')
        with open(cfg, 'w') as f:
            f.write(text)
        p = run(['ansible', 't0', '-m', 'command', '-a', 'hostname'], self.work)
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIsNone(rs.paths(self.work))

    def test_an_existing_cfg_is_merged_not_appended(self):
        # A team's ansible.cfg with its own [defaults], callback directory and enabled
        # callback. The printed lines appended to it: Ansible refuses the file (a second
        # [defaults]). `python -m spindle_ansible --merge` repairs it: the team's callback and
        # spindle both run, the module runs in the agent.
        os.mkdir(os.path.join(self.work, 'callbacks'))
        with open(os.path.join(self.work, 'callbacks', 'team.py'), 'w') as f:
            f.write(TEAM_CALLBACK)
        cfg = os.path.join(self.work, 'ansible.cfg')
        with open(cfg) as f:
            printed = f.read().split('host_key_checking')[0]
        with open(cfg, 'w') as f:
            f.write(TEAM_CFG % self.inventory + '\n' + printed)
        with open(os.path.join(self.work, 'play.yml'), 'w') as f:
            f.write('- hosts: t0\n  gather_facts: false\n  tasks:\n    - command: hostname\n')
        p = run(['ansible-playbook', 'play.yml'], self.work)
        self.assertNotEqual(p.returncode, 0, p.stdout)
        self.assertIn("section 'defaults' already exists", p.stdout)
        merge = [os.path.join(rs.VENV_BIN, 'python'), '-m', 'spindle_ansible', '--merge', 'ansible.cfg']
        m = run(merge, self.work)
        self.assertEqual(m.returncode, 0, m.stdout)
        self.assertIn('removed the [defaults] section appended', m.stdout)
        p = run(['ansible-playbook', 'play.yml'], self.work)
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn('TEAM-CALLBACK-RAN', p.stdout)
        self.assert_in_agent(p.stdout)
        self.assertIn('nothing changed', run(merge, self.work).stdout)

    def test_playbook(self):
        with open(os.path.join(self.work, 'play.yml'), 'w') as f:
            f.write('- hosts: t0\n  gather_facts: false\n  tasks:\n    - command: hostname\n')
        p = run(['ansible-playbook', 'play.yml'], self.work)
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assert_in_agent(p.stdout)

    def test_console(self):
        # The console sends no end-of-run callback (no path counts): its -vvv log shows the
        # connection and the module run in the agent.
        p = run(['ansible-console', '-vvv', 't0'], self.work, input='command hostname\nexit\n')
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assertIn('CHANGED', p.stdout)
        self.assertIn('ESTABLISH SPINDLE CONNECTION', p.stdout)
        self.assertIn('SPINDLE module run in the agent', p.stdout)

    def test_pull(self):
        repo = os.path.join(self.work, 'repo')
        os.makedirs(repo)
        with open(os.path.join(repo, 'local.yml'), 'w') as f:
            f.write(
                '- hosts: localhost\n  gather_facts: false\n  tasks:\n'
                '    - command: hostname\n    - stat: {path: /etc/hostname}\n'
            )
        for argv in (
            ['git', 'init', '-q'],
            ['git', 'add', '.'],
            ['git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'x'],
        ):
            subprocess.run(argv, cwd=repo, check=True)
        # The controller's own interpreter, named: discovery may find a pyenv shim that is not
        # activated here (stock fails on it the same way).
        with open(os.path.join(self.work, 'ansible.cfg'), 'a') as f:
            f.write('interpreter_python = /usr/bin/python3\n')
        p = run(
            [
                'ansible-pull',
                '-U',
                repo,
                '-d',
                os.path.join(self.work, 'checkout'),
                '-i',
                'localhost,',
                '-c',
                'local',
                'local.yml',
            ],
            self.work,
        )
        self.assertEqual(p.returncode, 0, p.stdout)
        self.assert_in_agent(p.stdout, at_least=2)


if __name__ == '__main__':
    unittest.main()
