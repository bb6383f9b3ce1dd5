"""Tests of spindle_ansible.depcache and its compat patch (``depfinder-cache``): with the patch,
ansible-core's own ``recursive_finder`` builds byte for byte the payload it builds without
it; the second run walks no file; a damaged cache file is ignored and replaced; an edited
file is a new key; every entry read from disk is checked.

Each build runs in a new process (as a run of ansible-playbook does), under the venv's
ansible-core and, when ``make test-matrix`` made them, the matrix venvs' (2.18, 2.20, 2.21).

Run: .venv/bin/python -m unittest discover -s ansible_plugin/tests -v    (from the repository root)
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.dirname(HERE)
ROOT = os.path.dirname(PLUGIN)
sys.path.insert(0, PLUGIN)

from spindle_ansible import depcache  # noqa: E402


def pythons():
    """(label, python) of the venv running this and of each matrix venv present."""
    out = [('venv', sys.executable)]
    for v in ('2.18', '2.20', '2.21'):
        p = os.path.join(ROOT, '.venv-' + v, 'bin', 'python')
        if os.path.exists(p):
            out.append((v, p))
    return out


class PatchedBuilds(unittest.TestCase):
    def setUp(self):
        self.runtime = tempfile.mkdtemp(prefix='spindle-depcache-')
        self.addCleanup(shutil.rmtree, self.runtime, True)
        self.user_dir()

    def user_dir(self):
        # what a run with a persistent daemon makes (daemon.user_dir); the cache never does
        os.makedirs(os.path.join(self.runtime, 'spindle-%d' % os.getuid()), 0o700, exist_ok=True)

    def build(self, python, mode, *names, env=None):
        e = dict(os.environ, XDG_RUNTIME_DIR=self.runtime, PYTHONPATH=PLUGIN, **(env or {}))
        p = subprocess.run(
            [python, os.path.join(HERE, 'depcache_build.py'), mode] + list(names),
            env=e,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(p.returncode, 0, p.stderr[-2000:])
        return json.loads(p.stdout.strip().splitlines()[-1])

    def cache_files(self):
        d = os.path.join(self.runtime, 'spindle-%d' % os.getuid())
        return (
            [os.path.join(d, n) for n in os.listdir(d) if n.startswith('depfinder-')]
            if os.path.isdir(d)
            else []
        )

    def test_the_payload_is_ansibles_and_the_second_run_walks_nothing(self):
        for label, python in pythons():
            with self.subTest(ansible=label):
                shutil.rmtree(self.runtime, True)
                os.mkdir(self.runtime, 0o700)
                self.user_dir()
                stock = self.build(python, 'stock', 'command', 'ping')
                cold = self.build(python, 'patched', 'command', 'ping')
                warm = self.build(python, 'patched', 'command', 'ping')
                self.assertEqual(cold['files'], stock['files'])
                self.assertEqual(warm['files'], stock['files'])
                self.assertGreater(stock['walks'], 20)
                # ping shares command's module_utils: the cold run walks each file once
                self.assertLess(cold['walks'], stock['walks'])
                self.assertEqual(warm['walks'], 0)
                files = self.cache_files()
                self.assertEqual(len(files), 1, files)
                self.assertEqual(os.stat(files[0]).st_mode & 0o777, 0o600)

    def test_a_damaged_file_is_ignored_and_replaced(self):
        python = sys.executable
        self.build(python, 'patched', 'ping')
        (path,) = self.cache_files()
        with open(path, 'w') as f:
            f.write('{"v": 1, "entries": {"not a key": [[], []]')
        stock = self.build(python, 'stock', 'ping')
        again = self.build(python, 'patched', 'ping')
        self.assertEqual(again['files'], stock['files'])
        self.assertEqual(again['walks'], stock['walks'])
        self.assertEqual(self.build(python, 'patched', 'ping')['walks'], 0)

    def test_runs_that_do_not_persist_leave_nothing_behind(self):
        # No persistent daemon's directory (a fresh runtime dir with a private daemon, -vvv,
        # SPINDLE_SOCKET): none is made. SPINDLE_PERSIST=0: the one there is not written.
        python = sys.executable
        stock = self.build(python, 'stock', 'ping')
        shutil.rmtree(os.path.join(self.runtime, 'spindle-%d' % os.getuid()))
        for _ in range(2):
            self.assertEqual(self.build(python, 'patched', 'ping')['files'], stock['files'])
        self.assertEqual(os.listdir(self.runtime), [])
        self.user_dir()
        again = self.build(python, 'patched', 'ping', env={'SPINDLE_PERSIST': '0'})
        self.assertEqual(again['walks'], stock['walks'])
        self.assertEqual(self.cache_files(), [])

    def test_off_with_the_environment_variable(self):
        python = sys.executable
        stock = self.build(python, 'stock', 'ping')
        off = self.build(python, 'patched', 'ping', env={'SPINDLE_DEPCACHE': '0'})
        self.assertEqual(off, stock)
        self.assertEqual(self.cache_files(), [])


class Entries(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='spindle-depcache-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.saved = dict(depcache._state, entries={}, plain=set())
        self.addCleanup(depcache._state.update, self.saved)
        depcache._state.update(path=None, entries={}, plain=set(), new=0, mtime=None, why=None)

    def test_an_edited_source_is_a_new_key(self):
        a, b = depcache.source_hash(b'import x\n'), depcache.source_hash(b'import y\n')
        depcache.store(a, 'ansible.module_utils.foo', False, {('ansible', 'module_utils', 'x')}, set())
        self.assertEqual(
            depcache.lookup(a, 'ansible.module_utils.foo', False), ([('ansible', 'module_utils', 'x')], [])
        )
        self.assertIsNone(depcache.lookup(b, 'ansible.module_utils.foo', False))
        self.assertIsNone(depcache.lookup(a, 'ansible.module_utils.foo', True))
        self.assertIsNone(depcache.lookup(a, 'ansible.module_utils.bar', False))

    def test_entries_out_of_shape_are_dropped_on_load(self):
        good = depcache.source_hash(b'good')
        path = os.path.join(self.dir, 'depfinder-x.json')
        doc = {
            'v': 1,
            'entries': {
                good + ':0:ansible.module_utils.ok': [[['ansible', 'module_utils', 'basic']], []],
                good + ':0:bad name!': [[], []],
                good + ':1:ansible.x': [[['ansible', 'not an identifier']], []],
                good + ':0:ansible.y': [[['a'] * (depcache.MAX_PARTS + 1)], []],
                good + ':0:ansible.z': [[], []],
                'short:0:ansible.w': [[], []],
                good + ':0:ansible.v': 'nope',
            },
        }
        with open(path, 'w') as f:
            json.dump(doc, f)
        self.assertEqual(
            sorted(depcache._read(path)),
            [good + ':0:ansible.module_utils.ok', good + ':0:ansible.z'],
        )
        with open(path, 'wb') as f:
            f.write(b' ' * (depcache.MAX_BYTES + 1))
        self.assertEqual(depcache._read(path), {})
        with open(path, 'wb') as f:
            f.write(b'[' * 200000 + b']' * 200000)
        self.assertEqual(depcache._read(path), {})

    def test_bounded_and_written_whole(self):
        depcache._state['path'] = os.path.join(self.dir, 'depfinder-t.json')
        for i in range(depcache.MAX_ENTRIES + 10):
            depcache.store(depcache.source_hash(b'%d' % i), 'ansible.m%d' % i, False, set(), set())
        self.assertEqual(len(depcache._state['entries']), depcache.MAX_ENTRIES)
        self.assertIsNone(depcache.lookup(depcache.source_hash(b'0'), 'ansible.m0', False))
        depcache.flush()
        self.assertEqual(len(depcache._read(depcache._state['path'])), depcache.MAX_ENTRIES)
        self.assertEqual([n for n in os.listdir(self.dir) if n.startswith('.')], [])


if __name__ == '__main__':
    unittest.main()
