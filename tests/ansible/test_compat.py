"""spindle_ansible.compat: the one module that patches ansible-core internals.

Each patch's shape check passes on every ansible-core this machine has a venv for (the main
venv's 2.19 and the matrix venvs of scripts/matrix.sh: 2.18, 2.20, 2.21), so VERIFIED is
true; an unknown version with matching shapes is patched with one warning; a shape that does
not match leaves Ansible's own behaviour (the stock connection, copy action and become
wrapping) with one warning.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PKG = os.path.join(REPO, 'ansible_plugin')
PATCHES = (
    'loader-routing',
    'copy-fast-path',
    'become-wrap',
    'async-execute-module',
    'strategy-queue-task',
    'depfinder-cache',
    'result-wake',
)


TOKEN_SCRIPT = r"""
import json, re, tempfile
from ansible import constants as C
C.DEFAULT_LOCAL_TMP = tempfile.mkdtemp(prefix='spindle-token-')
from ansible.executor import module_common
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader, module_loader
from ansible.template import Templar
from spindle_ansible import compat, modexec
from spindle_ansible.plancache import PlanCache

init_plugin_loader()
compat.install_module_token()
out = {'installed': compat._TOKENS['installed']}
if out['installed']:
    path = module_loader.find_plugin_with_context('ansible.legacy.command').plugin_resolved_path

    def build():
        return module_common.modify_module(
            module_name='ansible.legacy.command', module_path=path,
            module_args={'_raw_params': 'hostname'}, templar=Templar(loader=DataLoader()),
            task_vars={'ansible_python_interpreter': '/usr/bin/python3'}).b_module_data

    build()
    full = build()  # from the run's cache, no token
    compat._TOKENS['active'] = True
    tok = build()
    compat._TOKENS['active'] = False
    norm = lambda b: re.sub(rb'date_time=[^\n]*\n', b'', b)
    out.update(small=len(tok) < 20000, big=len(full) > 100000,
               equal=norm(compat.expand_token(tok)) == norm(full))
    (a, ba), (b, bb) = [modexec.plan('/usr/bin/python3', d, cache=PlanCache(None)) for d in (tok, full)]
    out['same_plan'] = a['manifest'] == b['manifest'] and all(ba.get(h) == bb.get(h) for h in bb.hashes())
print(json.dumps([compat.core_version(), out]))
"""


def in_venvs(code):
    """(python, last output line as JSON) of ``code`` run by each venv's Python."""
    import json

    out = []
    for py in venvs():
        p = subprocess.run(
            [py, '-c', code],
            env=dict(os.environ, PYTHONPATH=PKG),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
        )
        if p.returncode != 0:
            raise AssertionError('%s: %s' % (py, p.stdout))
        out.append((py, json.loads(p.stdout.strip().splitlines()[-1])))
    return out


def venvs():
    out = []
    for name in ('.venv', '.venv-2.18', '.venv-2.20', '.venv-2.21'):
        py = os.path.join(REPO, name, 'bin', 'python')
        if os.access(py, os.X_OK):
            out.append(py)
    return out


class Compat(unittest.TestCase):
    def setUp(self):
        sys.path.insert(0, PKG)
        try:
            from spindle_ansible import compat
        except ImportError as e:
            self.skipTest('ansible-core not importable here (%s)' % e)
        finally:
            sys.path.remove(PKG)
        self.compat = compat
        compat._checked.clear()
        self.addCleanup(compat._checked.clear)
        self.warnings = []
        patcher = mock.patch.object(compat.display, 'warning', self.warnings.append)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_every_patch_fits_every_installed_ansible_core(self):
        code = (
            'from spindle_ansible import compat; import json; '
            'print(json.dumps([compat.core_version(), {n: compat._shape(n) for n in %r}]))' % (PATCHES,)
        )
        found = []
        for py, (version, shapes) in in_venvs(code):
            self.assertIn(version, self.compat.VERIFIED, py)
            self.assertEqual(shapes, {n: [] for n in PATCHES}, '%s (%s)' % (py, version))
            found.append(version)
        print('compat: shapes match on ansible-core %s' % ', '.join(found))
        self.assertTrue(found)

    def test_module_token_round_trips_on_every_installed_ansible_core(self):
        # The wrapper built with a token is ~5 KB, gives the same plan (manifest, blob bytes) as
        # the full one, and expand_token puts back exactly what Ansible builds (but the date).
        found = []
        for py, (version, out) in in_venvs(TOKEN_SCRIPT):
            if version == '2.18':
                self.assertEqual(out, {'installed': False}, py)  # no cached module object there
                continue
            want = {'installed': True, 'small': True, 'big': True, 'equal': True, 'same_plan': True}
            self.assertEqual(out, want, '%s (%s)' % (py, version))
            found.append(version)
        print('compat: module-token round trips on ansible-core %s' % ', '.join(found))
        self.assertTrue(found)

    def test_verified_version_applies_silently(self):
        for name in PATCHES:
            self.assertTrue(self.compat.applies(name))
        self.assertEqual(self.warnings, [])

    def test_unknown_version_with_matching_shapes_applies_with_one_warning(self):
        with mock.patch.object(self.compat, 'core_version', return_value='2.99'):
            self.assertTrue(self.compat.applies('become-wrap'))
            self.assertTrue(self.compat.applies('become-wrap'))
        self.assertEqual(len(self.warnings), 1, self.warnings)
        self.assertIn('verified on ansible-core 2.18, 2.19, 2.20, 2.21, not 2.99', self.warnings[0])

    def test_a_missing_shape_keeps_ansibles_own_behaviour(self):
        from ansible.plugins.loader import action_loader, connection_loader
        from spindle_ansible.routing import LoaderPatch

        missing = mock.patch.object(self.compat, '_shape', return_value=['X.y'])
        with missing:
            before = (connection_loader.get_with_context, action_loader.get)
            patch = LoaderPatch().apply()
            self.assertEqual((connection_loader.get_with_context, action_loader.get), before)
            patch.restore()

            class Become(object):
                def build_become_command(self, cmd, shell):
                    return 'sudo ' + cmd

            plugin = Become()
            self.assertFalse(self.compat.wrap_become(plugin, {}, 10))
            self.assertNotIn('build_become_command', plugin.__dict__)

            class Conn(object):
                def spindle_copy_fast(self):
                    pass

            from ansible.plugins.action.copy import ActionModule

            action = ActionModule.__new__(ActionModule)
            self.assertIs(type(self.compat.route_action('copy', action, Conn())), ActionModule)
        self.assertEqual(len(self.warnings), 3, self.warnings)
        self.assertTrue(
            all("it is not applied, Ansible's own behaviour stays" in w for w in self.warnings), self.warnings
        )

    def test_patches_apply_and_restore(self):
        from ansible.plugins.loader import connection_loader
        from spindle_ansible.routing import LoaderPatch

        patch = LoaderPatch().apply()
        try:
            self.assertTrue(getattr(connection_loader.get_with_context, 'spindle_routed', False))
        finally:
            patch.restore()
        self.assertFalse(getattr(connection_loader.get_with_context, 'spindle_routed', False))
        memory = {}

        class Become(object):
            def build_become_command(self, cmd, shell):
                return 'sudo ' + cmd

        plugin = Become()
        self.assertTrue(self.compat.wrap_become(plugin, memory, 2))
        for i in range(3):
            plugin.build_become_command('cmd%d' % i, None)
        self.assertEqual(memory, {'sudo cmd1': 'cmd1', 'sudo cmd2': 'cmd2'})


GC_LOOKUP = """
import gc
from ansible.plugins.lookup import LookupBase


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        return [gc.get_freeze_count()]
"""

GC_PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - debug:
        msg: "frozen={{ lookup('gc_frozen') }}"
"""


class LocalPlay(unittest.TestCase):
    """A real ansible-playbook run on localhost in a scratch directory, with the README's lines
    or with none, a plugin of the test's own beside the playbook (``PLUGIN``: its directory,
    file name and source) and a private spindle daemon."""

    PLUGIN = None

    def setUp(self):
        import readme_setup as rs

        why = rs.available()
        if why:
            self.skipTest(why)
        self.rs = rs
        self.work = tempfile.mkdtemp(prefix='spindle-compat-')
        self.addCleanup(shutil.rmtree, self.work, True)
        directory, name, source = self.PLUGIN
        os.mkdir(os.path.join(self.work, directory))
        with open(os.path.join(self.work, directory, name), 'w') as f:
            f.write(source)

    def play(self, spindle, playbook, *args):
        if spindle:
            self.rs.write_cfg(self.work)
        else:
            with open(os.path.join(self.work, 'ansible.cfg'), 'w') as f:
                f.write('[defaults]\n')
        with open(os.path.join(self.work, 'site.yml'), 'w') as f:
            f.write(playbook)
        return self.rs.run(
            [os.path.join(self.rs.VENV_BIN, 'ansible-playbook'), '-i', 'localhost,']
            + list(args)
            + ['site.yml'],
            cwd=self.work,
            env=dict(self.rs.env(self.work), SPINDLE_PERSIST='0'),
            timeout=300,
        )

    def reported(self, p, name):
        """The number the run printed as ``name=N`` (it must have succeeded)."""
        self.assertEqual(p.returncode, 0, p.stdout[-3000:])
        found = re.search(r'%s=(\d+)' % name, p.stdout)
        self.assertIsNotNone(found, p.stdout[-3000:])
        return int(found.group(1))


class WorkerGc(LocalPlay):
    """worker-gc: Ansible's worker for a task (a lookup runs there) starts with the objects it
    inherited frozen when spindle is configured (the README's lines, real ansible-playbook), and
    not without spindle: the test sees the difference the hook makes."""

    PLUGIN = ('lookup_plugins', 'gc_frozen.py', GC_LOOKUP)

    def frozen(self, spindle):
        return self.reported(self.play(spindle, GC_PLAYBOOK), 'frozen')

    def test_a_worker_starts_with_what_it_inherited_frozen(self):
        with_spindle, stock = self.frozen(True), self.frozen(False)
        print('worker-gc: %d objects frozen in a worker with spindle, %d without' % (with_spindle, stock))
        self.assertGreater(with_spindle, 10000)
        self.assertEqual(stock, 0)


POLL_CALLBACK = """
from ansible.plugins.callback import CallbackBase
from ansible.plugins.strategy import StrategyBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'count_polls'
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self):
        super().__init__()
        self.polls = 0
        looked = StrategyBase._process_pending_results

        def counted(strategy, *args, **kwargs):
            self.polls += 1
            return looked(strategy, *args, **kwargs)

        StrategyBase._process_pending_results = counted

    def v2_playbook_on_stats(self, stats):
        self._display.display('polls=%d' % self.polls)
"""

WAKE_PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - command: sleep 2
      changed_when: false
"""

DEAD_WORKER_PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - debug:
        msg: "{{ lookup('pipe', 'kill -9 $PPID') }}"
    - debug:
        msg: never reached
"""


class ResultWake(LocalPlay):
    """result-wake: with spindle configured (the README's lines, real ansible-playbook), the
    controller looks at its result queue when a result arrives, not every millisecond while a
    task runs; stock Ansible polls (the test sees the difference the patch makes). A worker
    that dies without a result still ends the run with Ansible's own error."""

    PLUGIN = ('callback_plugins', 'count_polls.py', POLL_CALLBACK)
    LOCAL = ('-c', 'local', '-e', 'ansible_python_interpreter=/usr/bin/python3')

    def polls(self, spindle):
        return self.reported(self.play(spindle, WAKE_PLAYBOOK, *self.LOCAL), 'polls')

    def test_the_controller_wakes_for_a_result_instead_of_polling(self):
        with_spindle, stock = self.polls(True), self.polls(False)
        print(
            'result-wake: a 2 s task, result queue looked at %d times with spindle, %d without'
            % (with_spindle, stock)
        )
        self.assertLess(with_spindle, 200)
        self.assertGreater(stock, 500)

    def test_a_dead_worker_still_ends_the_run(self):
        for spindle in (True, False):
            p = self.play(spindle, DEAD_WORKER_PLAYBOOK, *self.LOCAL)
            self.assertNotEqual(p.returncode, 0, p.stdout[-3000:])
            self.assertIn('A worker was found in a dead state', p.stdout, p.stdout[-3000:])
            self.assertNotIn('never reached', p.stdout)


FAKE_CONNECTION = '''
from ansible.plugins.connection.local import Connection as Local

DOCUMENTATION = """
    name: fakeconn
    short_description: the local connection under a name spindle does not serve
    description: [a test plugin]
    author: spindle tests
    options:
        become_success_timeout:
            type: int
            default: 10
            description: [as local's]
            vars: [{name: ansible_local_become_success_timeout}]
        become_strip_preamble:
            type: bool
            default: true
            description: [as local's]
            vars: [{name: ansible_local_become_strip_preamble}]
    extends_documentation_fragment: [connection_pipelining]
"""


class Connection(Local):
    transport = 'fakeconn'
'''

UNROUTED_PLAYBOOK = """
- hosts: all
  gather_facts: false
  connection: fakeconn
  tasks:
    - command: echo one
    - command: echo two
    - command: echo three
"""


class Unrouted(LocalPlay):
    """loader-routing: a host whose connection spindle does not serve (here a plugin of the
    playbook's own; in the field paramiko, winrm, network plugins) runs on that plugin, as
    without spindle, and the run says so once, not once per task (every task is a new worker)."""

    PLUGIN = ('connection_plugins', 'fakeconn.py', FAKE_CONNECTION)

    def test_a_connection_spindle_does_not_serve_is_said_once(self):
        p = self.play(True, UNROUTED_PLAYBOOK, '-e', 'ansible_python_interpreter=/usr/bin/python3')
        self.assertEqual(p.returncode, 0, p.stdout[-3000:])
        said = re.findall(r"connection 'fakeconn' is not one spindle serves", p.stdout)
        self.assertEqual(len(said), 1, p.stdout[-3000:])
        self.assertIn('(first: localhost)', p.stdout)
        self.assertEqual(p.stdout.count('ok=3'), 1, p.stdout[-3000:])
        # without spindle: nothing said
        p = self.play(False, UNROUTED_PLAYBOOK, '-e', 'ansible_python_interpreter=/usr/bin/python3')
        self.assertEqual(p.returncode, 0, p.stdout[-3000:])
        self.assertNotIn('spindle', p.stdout)


if __name__ == '__main__':
    unittest.main()
