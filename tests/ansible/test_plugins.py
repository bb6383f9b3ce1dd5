"""Tests of spindle's Ansible plugins: ansible-doc finds them, the connection routing patch
behaves, and the conformance playbook gives the same results through spindle as through
stock Ansible (run_conformance.py, real sshd targets in network namespaces).

Run: ``python3 -m unittest discover -s tests/ansible -v`` (as root, for the fleet).  Skips,
with the reason printed, when the venv (scripts/venv.sh), the daemon binary or the fleet
(netns-fleet.sh exit 77) is missing.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VENV = os.path.abspath(os.path.join(REPO, os.environ.get('SPINDLE_VENV') or '.venv'))
VENV_BIN = os.path.join(VENV, 'bin')
PKG_ROOT = os.path.join(REPO, 'ansible_plugin')
PLUGINS = os.path.join(PKG_ROOT, 'spindle_ansible', 'plugins')
SKIP = 77

ROUTING_CHECK = textwrap.dedent('''
    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import connection_loader, init_plugin_loader
    init_plugin_loader()
    from spindle_ansible.plugins.strategy import LoaderPatch
    before = connection_loader.get_with_context
    p1 = LoaderPatch().apply()
    p2 = LoaderPatch().apply()  # idempotent: the second one does nothing
    assert connection_loader.get_with_context is not before
    ssh = connection_loader.get('ssh', PlayContext())
    assert ssh._load_name.endswith('spindle') and ssh.transport == 'spindle', ssh
    local = connection_loader.get('ansible.builtin.local', PlayContext())
    assert local._spindle_forced_transport == 'local' and local.transport == 'local'
    other = connection_loader.get('winrm', PlayContext())  # not routed
    assert other is not None and other.transport != 'spindle', other
    p2.restore()
    assert connection_loader.get_with_context is not before
    p1.restore()
    assert connection_loader.get_with_context == before
    assert connection_loader.get('ssh', PlayContext()).transport == 'ssh'
    print('routing ok')
''')


def _env(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('ANSIBLE_', 'SPINDLE_'))}
    env.update({
        'ANSIBLE_HOME': home,
        'ANSIBLE_LOCAL_TEMP': os.path.join(home, 'tmp'),
        'ANSIBLE_STRATEGY_PLUGINS': os.path.join(PLUGINS, 'strategy'),
        'ANSIBLE_CONNECTION_PLUGINS': os.path.join(PLUGINS, 'connection'),
        'ANSIBLE_CALLBACK_PLUGINS': os.path.join(PLUGINS, 'callback'),
        'PYTHONPATH': PKG_ROOT,
    })
    return env


class PluginTests(unittest.TestCase):
    def setUp(self):
        if not os.access(os.path.join(VENV_BIN, 'ansible-doc'), os.X_OK):
            print('SKIP: no venv with ansible-core at %s (run scripts/venv.sh)' % VENV_BIN)
            self.skipTest('no venv with ansible-core (scripts/venv.sh)')
        self.home = tempfile.mkdtemp(prefix='spindle-ansible-test-')
        self.addCleanup(shutil.rmtree, self.home, True)

    def run_venv(self, *argv):
        p = subprocess.run(list(argv), env=_env(self.home), cwd=self.home, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True)
        self.assertEqual(p.returncode, 0, '%s failed:\n%s' % (' '.join(argv), p.stdout))
        return p.stdout

    def test_ansible_doc(self):
        doc = os.path.join(VENV_BIN, 'ansible-doc')
        for kind, name in (('strategy', 'spindle_linear'), ('strategy', 'spindle_free'),
                           ('connection', 'spindle'), ('callback', 'spindle_record')):
            out = self.run_venv(doc, '-t', kind, name)
            self.assertIn(name, out)
        self.assertIn('spindle_socket', self.run_venv(doc, '-t', 'connection', 'spindle'))

    def test_config_lines(self):
        out = self.run_venv(os.path.join(VENV_BIN, 'python'), '-m', 'spindle_ansible')
        self.assertIn('strategy = spindle_linear', out)
        for line in out.splitlines():
            if line.endswith(('/strategy', '/connection', '/callback')):
                self.assertTrue(os.path.isdir(line.split(' = ', 1)[1]), line)

    def test_connection_routing(self):
        out = self.run_venv(os.path.join(VENV_BIN, 'python'), '-c', ROUTING_CHECK)
        self.assertIn('routing ok', out)

    def test_conformance(self):
        p = subprocess.run([sys.executable, os.path.join(HERE, 'run_conformance.py')],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True)
        print(p.stdout)
        if p.returncode == SKIP:
            lines = p.stdout.strip().splitlines()
            self.skipTest(lines[-1] if lines else 'cannot run here')
        self.assertEqual(p.returncode, 0, 'stock and spindle runs differ:\n%s' % p.stdout)


if __name__ == '__main__':
    unittest.main()
