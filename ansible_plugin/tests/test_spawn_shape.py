"""The agent's module runner recognises the preexec_fn of the real
``AnsibleModule.run_command`` (src/agent/modrun/15_spawn.py) on every ansible-core here: with no
umask it is dropped (CPython then vforks), with one it is kept. Run under the venv's
ansible-core and, when ``make test-matrix`` made them, the matrix venvs' (2.18, 2.20, 2.21).
"""

import json
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

SCRIPT = r"""
import json, os, subprocess, sys
sys.path.insert(0, %(tests)r)
import agent_source
modrun = agent_source.load_modrun()
from ansible.module_utils import basic
basic._ANSIBLE_ARGS = json.dumps({'ANSIBLE_MODULE_ARGS': {'_ansible_tmpdir': '/tmp'}}).encode()
basic._ANSIBLE_PROFILE = 'legacy'
module = basic.AnsibleModule(argument_spec={})
seen = []
real = modrun._REAL_POPEN_INIT
def record(self, *args, **kwargs):
    seen.append(kwargs.get('preexec_fn') is not None)
    real(self, *args, **kwargs)
modrun._REAL_POPEN_INIT = record
out = {}
for umask in (None, 0o077):
    rc, stdout, _ = module.run_command(['sh', '-c', 'umask'], umask=umask)
    out[str(umask)] = [rc, stdout.strip(), seen.pop()]
print(json.dumps(out))
"""


class RealPreexec(unittest.TestCase):
    def test_the_real_run_command_preexec_is_dropped_only_without_a_umask(self):
        pythons = [('venv', sys.executable)]
        for v in ('2.18', '2.20', '2.21'):
            p = os.path.join(ROOT, '.venv-' + v, 'bin', 'python')
            if os.path.exists(p):
                pythons.append((v, p))
        code = SCRIPT % {'tests': os.path.join(ROOT, 'tests', 'python')}
        for label, python in pythons:
            with self.subTest(ansible=label):
                p = subprocess.run([python, '-c', code], capture_output=True, text=True, timeout=60, cwd='/')
                self.assertEqual(p.returncode, 0, p.stderr[-2000:])
                out = json.loads(p.stdout.strip().splitlines()[-1])
                umask = '%04o' % _current_umask()
                self.assertEqual(out['None'], [0, umask, False])  # no preexec: vfork
                self.assertEqual(out['63'], [0, '0077', True])  # the task's umask: kept


def _current_umask():
    old = os.umask(0)
    os.umask(old)
    return old


if __name__ == '__main__':
    unittest.main()
