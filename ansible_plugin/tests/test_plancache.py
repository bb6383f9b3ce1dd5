"""Unit tests of spindle_ansible.plancache: entries a worker writes are read by later workers,
malformed ones are ignored, and the controller's preload puts them in the memory every later
worker inherits (no file read per task).

Run: python3 -m unittest discover -s ansible_plugin/tests -v    (from the repository root)
"""

import os
import shutil
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from spindle_ansible.plancache import PlanCache  # noqa: E402

ZIP = {'manifest': {'ansible/module_utils/basic.py': 'a' * 64}, 'core': ['ansible/module_utils/basic.py']}


class PlanCacheTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='spindle-plans-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.root = os.path.join(self.dir, 'spindle_plans')

    def test_a_later_worker_reads_what_an_earlier_one_wrote(self):
        PlanCache(self.root).put('zip', 'k1', ZIP)
        self.assertEqual(PlanCache(self.root).get('zip', 'k1'), ZIP)
        self.assertIsNone(PlanCache(self.root).get('zip', 'other'))

    def test_malformed_entries_are_ignored(self):
        os.makedirs(self.root)
        with open(os.path.join(self.root, 'zip-bad.json'), 'w') as f:
            f.write('{"manifest": {"x": "not a hash"}}')
        with open(os.path.join(self.root, 'tpl-broken.json'), 'w') as f:
            f.write('{')
        cache = PlanCache(self.root)
        cache.preload()
        self.assertIsNone(cache.get('zip', 'bad'))
        self.assertIsNone(cache.get('tpl', 'broken'))

    def test_preload_keeps_new_entries_in_memory_and_reads_only_a_changed_directory(self):
        controller = PlanCache(self.root)
        controller.preload()  # no directory yet: nothing
        PlanCache(self.root).put('zip', 'k1', ZIP)  # the first task's worker
        controller.preload()
        os.unlink(os.path.join(self.root, 'zip-k1.json'))
        self.assertEqual(controller.get('zip', 'k1'), ZIP)  # from memory: a forked worker's too
        controller.preload()  # (the unlink changed the directory)
        from spindle_ansible import plancache

        listed = []
        real = plancache.os.listdir
        plancache.os.listdir = lambda d: listed.append(d) or real(d)
        try:
            controller.preload()  # unchanged directory: not listed again
        finally:
            plancache.os.listdir = real
        self.assertEqual(listed, [])
        PlanCache(self.root).put('tpl', 'k2', {'main': 10, 'invoke': 5})
        controller.preload()
        os.unlink(os.path.join(self.root, 'tpl-k2.json'))
        self.assertEqual(controller.get('tpl', 'k2'), {'main': 10, 'invoke': 5})


if __name__ == '__main__':
    unittest.main()
