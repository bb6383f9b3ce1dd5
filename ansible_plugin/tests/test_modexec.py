"""Unit tests of spindle_ansible.modexec.core_files: which payload files warm mode may keep
loaded in the agent (ansible-core's own module_utils, byte-identical to the controller's
installed ansible-core), and that a shadowing custom module_utils turns warm mode off.

Run: python3 -m unittest discover -s ansible_plugin/tests -v    (from the repository root)
"""

import hashlib
import os
import shutil
import sys
import tempfile
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from spindle_ansible import modexec  # noqa: E402


def sha(data):
    return hashlib.sha256(data).hexdigest()


class CoreFilesTests(unittest.TestCase):
    def setUp(self):
        self.site = tempfile.mkdtemp(prefix='spindle-site-')
        self.addCleanup(shutil.rmtree, self.site, True)
        mu = os.path.join(self.site, 'ansible', 'module_utils')
        os.makedirs(mu)
        for name, data in (('__init__.py', b''), ('basic.py', b'BASIC = 1\n'), ('urls.py', b'U = 2\n')):
            with open(os.path.join(mu, name), 'wb') as f:
                f.write(data)
        fake = types.ModuleType('ansible')
        fake.__file__ = os.path.join(self.site, 'ansible', '__init__.py')
        saved = sys.modules.get('ansible')
        sys.modules['ansible'] = fake
        self.addCleanup(
            lambda: sys.modules.__setitem__('ansible', saved) if saved else sys.modules.pop('ansible', None)
        )
        modexec._CORE_SHA.clear()
        self.addCleanup(modexec._CORE_SHA.clear)

    def test_identical_core_files_are_listed(self):
        manifest = {
            'ansible/module_utils/__init__.py': sha(b'synthesized'),  # never kept
            'ansible/module_utils/basic.py': sha(b'BASIC = 1\n'),
            'ansible/modules/command.py': sha(b'module'),
            'ansible/module_utils/spx_util.py': sha(b'custom, not in core'),
            'ansible_collections/x/y/plugins/module_utils/z.py': sha(b'collection'),
        }
        self.assertEqual(modexec.core_files(manifest), ['ansible/module_utils/basic.py'])

    def test_a_shadowed_core_file_disables_warm_mode(self):
        manifest = {
            'ansible/module_utils/basic.py': sha(b'BASIC = 1\n'),
            'ansible/module_utils/urls.py': sha(b'patched urls\n'),
        }
        self.assertIsNone(modexec.core_files(manifest))


class StockPathTests(unittest.TestCase):
    """Every module run that does not go to the agent is named with its reason."""

    def test_plain_commands_are_no_module_runs(self):
        for cmd in (
            "/bin/sh -c 'echo ~ && sleep 0'",
            "/bin/sh -c '( umask 77 && mkdir -p \"` echo /root/.ansible/tmp `\"&& mkdir "
            "\"` echo /root/.ansible/tmp/ansible-tmp-1-2 `\" ) && sleep 0'",
            "/bin/sh -c 'chmod u+rwx /root/.ansible/tmp/ansible-tmp-1-2/ "
            "/root/.ansible/tmp/ansible-tmp-1-2/AnsiballZ_ping.py && sleep 0'",
            "/bin/sh -c 'rm -f -r /root/.ansible/tmp/ansible-tmp-1-2/ > /dev/null 2>&1 && sleep 0'",
            "hostname",
            # the script action runs its script from the temp dir: no module
            "/bin/sh -c '/root/.ansible/tmp/ansible-tmp-1-2/s.sh one two && sleep 0'",
            "/bin/sh -c 'python3 /root/.ansible/tmp/ansible-tmp-1-2/s.py && sleep 0'",
        ):
            self.assertIsNone(modexec.file_module_reason(cmd), cmd)
            self.assertIsNone(modexec.plan(cmd, None))
            self.assertIsNone(modexec.plan(cmd, b'echo hi'))

    def test_module_files_name_their_reason(self):
        ansiballz = (
            "/bin/sh -c '/usr/bin/python3 /root/.ansible/tmp/ansible-tmp-1-2/AnsiballZ_command.py && sleep 0'"
        )
        old = (
            "/bin/sh -c '/root/.ansible/tmp/ansible-tmp-1-2/AnsiballZ_helloworld "
            "/root/.ansible/tmp/ansible-tmp-1-2/args && sleep 0'"
        )
        async_cmd = (
            "/bin/sh -c '/usr/bin/python3 /root/.ansible/tmp/ansible-tmp-1-2/"
            "AnsiballZ_async_wrapper.py j1 30 /root/.ansible/tmp/ansible-tmp-1-2/"
            "AnsiballZ_command.py _ && sleep 0'"
        )
        fake = types.ModuleType('ansible')
        consts = types.ModuleType('ansible.constants')
        consts.DEFAULT_KEEP_REMOTE_FILES = False
        fake.constants = consts
        saved = {k: sys.modules.get(k) for k in ('ansible', 'ansible.constants')}
        sys.modules.update({'ansible': fake, 'ansible.constants': consts})
        try:
            self.assertIn('old-style', modexec.file_module_reason(ansiballz))
            self.assertIn('old-style', modexec.file_module_reason(old))
            self.assertIn('async', modexec.file_module_reason(async_cmd))
            # (the wrapper's own file name, as ActionBase._execute_module gives it)
            self.assertIn(
                'async',
                modexec.file_module_reason(async_cmd.replace('AnsiballZ_async_wrapper', 'async_wrapper')),
            )
            chmod = (
                "/bin/sh -c 'chmod u+rwx /root/.ansible/tmp/ansible-tmp-1-2/ /root/.ansible/"
                "tmp/ansible-tmp-1-2/AnsiballZ_async_wrapper.py && sleep 0'"
            )
            self.assertIsNone(modexec.file_module_reason(chmod))
            self.assertIn('non-Python', modexec.file_module_reason('/bin/sh', b'#!/bin/sh\n'))
            # ansible-core 2.18's interpreter discovery pipes its platform script, not sudoable
            self.assertIsNone(modexec.file_module_reason('/usr/bin/python3', b'import json', sudoable=False))
            consts.DEFAULT_KEEP_REMOTE_FILES = True
            self.assertIn('KEEP_REMOTE_FILES', modexec.file_module_reason(ansiballz))
        finally:
            for k, v in saved.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v

    def test_wrapper_problems_raise_stock_path(self):
        wrapper = b'#!/usr/bin/python\n_ANSIBALLZ_WRAPPER = True\nnot a wrapper\n'
        with self.assertRaises(modexec.StockPath) as e:
            modexec.plan('/usr/bin/python3', wrapper)
        self.assertIn('could not be read', str(e.exception))
        with self.assertRaises(modexec.StockPath) as e:
            modexec.plan('/usr/bin/python3', wrapper, isolation='off')
        self.assertIn('isolation', str(e.exception))


class CallWithBlobsTests(unittest.TestCase):
    """modexec.call_with_blobs: code the daemon lacks is uploaded and the call retried; code
    the agent dropped (bounded store: ``remote`` ``missing_blobs: ...``, nothing ran) makes
    the call once more; anything else is raised at once."""

    class Client(object):
        def __init__(self, errors):
            self.errors = list(errors)
            self.calls = []

        def request(self, op, target=None, **kw):
            self.calls.append(op)
            if op == 'call' and self.errors:
                raise self.errors.pop(0)
            return {'rc': 0}

    def test_retries(self):
        from spindle_ansible.client import SpindleError

        blobs = modexec.Blobs.of({'h1': b'code'})
        agent_dropped = SpindleError('remote', 'missing_blobs: blob h1 for m.py is not on the agent')
        c = self.Client([agent_dropped])
        self.assertEqual(modexec.call_with_blobs(c, None, {'op': 'run_module'}, blobs), {'rc': 0})
        self.assertEqual(c.calls, ['call', 'call'])
        c = self.Client([SpindleError('missing_blobs', 'x', details={'missing': ['h1']})])
        modexec.call_with_blobs(c, None, {}, blobs)
        self.assertEqual(c.calls, ['call', 'blob_put', 'call'])
        c = self.Client([agent_dropped, agent_dropped])
        with self.assertRaises(SpindleError):
            modexec.call_with_blobs(c, None, {}, blobs)
        c = self.Client([SpindleError('remote', 'io: disk full')])
        with self.assertRaises(SpindleError):
            modexec.call_with_blobs(c, None, {}, blobs)
        self.assertEqual(c.calls, ['call'])


if __name__ == '__main__':
    unittest.main()
