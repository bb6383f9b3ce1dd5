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
        self.addCleanup(lambda: sys.modules.__setitem__('ansible', saved) if saved else sys.modules.pop('ansible', None))
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
        manifest = {'ansible/module_utils/basic.py': sha(b'BASIC = 1\n'),
                    'ansible/module_utils/urls.py': sha(b'patched urls\n')}
        self.assertIsNone(modexec.core_files(manifest))


if __name__ == '__main__':
    unittest.main()
