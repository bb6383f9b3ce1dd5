"""src/agent/modrun/: the module_utils a warm run keeps loaded stay only while the next payload
carries the same bytes. A run takes each file's sha256 from the agent's manifest (checked when
its blob was stored) instead of hashing the file again; without one it hashes the file."""

import hashlib
import sys
import types
import unittest

import agent_source

modrun = agent_source.load_modrun('spindle_modrun_kept')
REL = 'ansible/module_utils/spx_kept.py'
NAME = 'ansible.module_utils.spx_kept'


class KeptModulesTest(unittest.TestCase):
    def setUp(self):
        sys.modules[NAME] = types.ModuleType(NAME)
        modrun._KEPT.clear()
        modrun._KEPT[NAME] = (REL, 'a' * 64)
        self.addCleanup(modrun._KEPT.clear)
        self.addCleanup(sys.modules.pop, NAME, None)

    def test_the_manifests_sha_is_used_as_given(self):
        payload = modrun.Payload({REL: b'whatever'}, modrun.ROOT, {REL: 'a' * 64})
        self.assertEqual(payload.sha(REL), 'a' * 64)
        modrun._validate_kept(payload)
        self.assertIn(NAME, modrun._KEPT)
        self.assertIn(NAME, sys.modules)

    def test_other_bytes_unload_every_kept_module(self):
        payload = modrun.Payload({REL: b'new'}, modrun.ROOT, {REL: 'b' * 64})
        modrun._validate_kept(payload)
        self.assertEqual(modrun._KEPT, {})
        self.assertNotIn(NAME, sys.modules)

    def test_without_a_manifest_the_file_is_hashed(self):
        payload = modrun.Payload({REL: b'new'}, modrun.ROOT)
        self.assertEqual(payload.sha(REL), hashlib.sha256(b'new').hexdigest())
        modrun._validate_kept(payload)
        self.assertNotIn(NAME, sys.modules)

    def test_a_file_missing_from_the_payload_unloads_them(self):
        modrun._validate_kept(modrun.Payload({}, modrun.ROOT, {}))
        self.assertNotIn(NAME, sys.modules)


if __name__ == '__main__':
    unittest.main()
