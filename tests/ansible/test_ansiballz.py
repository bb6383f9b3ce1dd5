"""The controller side's reading of the AnsiballZ wrappers ansible-core builds
(spindle_ansible.ansiballz.parse_wrapper): the quick reading (the zip literal cut out before
parsing) gives exactly what parsing the whole wrapper gives, for real wrappers of the
installed ansible-core, including arguments that look like the zip keyword.

Run with the project venv's Python (it imports ansible-core); skipped without it.
"""

import os
import subprocess
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
VENV_PY = os.path.join(REPO, os.environ.get('SPINDLE_VENV') or '.venv', 'bin', 'python')

CHECK = textwrap.dedent('''
    import sys
    sys.path.insert(0, %(pkg)r)
    from ansible.plugins.loader import init_plugin_loader, module_loader
    init_plugin_loader()
    from ansible.executor import module_common
    from ansible.template import Templar
    from ansible.parsing.dataloader import DataLoader
    import base64, tempfile
    from spindle_ansible import ansiballz, modexec, plancache
    cache_dir = tempfile.mkdtemp()
    cases = [
        ('command', {'_raw_params': 'hostname'}),
        ('copy', {'content': "zip_data='QUJD' and zip_data=\\"QUJD\\"\\n" * 3000, 'dest': '/tmp/x'}),
        ('stat', {'path': "/tmp/it's"}),
    ]
    for name, args in cases:
        built = module_common.modify_module(
            module_name=name, module_path=module_loader.find_plugin(name), module_args=args,
            templar=Templar(loader=DataLoader()),
            task_vars={'ansible_python_interpreter': '/usr/bin/python3'})
        src = built.b_module_data if hasattr(built, 'b_module_data') else built[0]  # 2.18: a tuple
        quick, full = ansiballz.parse_wrapper(src), ansiballz._parse(src)
        assert quick == full, (name, set(quick) ^ set(full))
        # the run cache's reading: template lines from a cache (second time: from disk)
        for cache in (plancache.PlanCache(cache_dir), plancache.PlanCache(cache_dir)):
            lazy = ansiballz.read_wrapper(src, cache)
            if 'zip_b64' in lazy:
                lazy['zip'] = base64.b64decode(lazy.pop('zip_b64'))
            assert lazy == full, (name, [k for k in full if lazy.get(k) != full[k]])
        planned = [modexec.plan('/usr/bin/python3', src, cache=plancache.PlanCache(d))
                   for d in (None, cache_dir, cache_dir)]
        assert planned[0][0] == planned[1][0] == planned[2][0], name
        blobs = planned[2][1]
        assert [blobs.get(h) for h in blobs.hashes()] == [planned[0][1].get(h) for h in blobs.hashes()]
        assert len(full['zip']) > 1000, name
        if full['dialect'] == 'v2':  # ansible-core 2.19 and later: the quick reading applies
            assert ansiballz._ZIP_LITERAL.search(src, src.rfind(b'\\nif __name__ == ')), name
        print(name, 'ok', len(src))
    print('wrappers ok')
''') % {'pkg': os.path.join(REPO, 'ansible_plugin')}


class WrapperTests(unittest.TestCase):
    def test_quick_reading_equals_full_parse(self):
        """On the venv's ansible-core, and on 2.18 and 2.21 where their venvs exist
        (scripts/matrix.sh): v1 and v2 wrappers."""
        if not os.access(VENV_PY, os.X_OK):
            print('SKIP: no venv at %s' % VENV_PY)
            self.skipTest('no venv (run scripts/venv.sh)')
        pythons = [VENV_PY] + [
            p
            for p in (os.path.join(REPO, '.venv-%s' % v, 'bin', 'python') for v in ('2.18', '2.21'))
            if os.access(p, os.X_OK) and p != VENV_PY
        ]
        for py in pythons:
            with self.subTest(python=py):
                p = subprocess.run(
                    [py, '-c', CHECK],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    universal_newlines=True,
                )
                print(py, p.stdout)
                self.assertEqual(p.returncode, 0, p.stdout)
                self.assertIn('wrappers ok', p.stdout)


if __name__ == '__main__':
    unittest.main()
