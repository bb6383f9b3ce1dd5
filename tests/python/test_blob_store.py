"""The agent's module code store (src/agent/parts/48_blob_store.py): bounded, least recently
used first out, and a call naming code it no longer holds answered `missing_blobs` before it
runs anything (the daemon then sends the code again: tests in src/router/tests/blobs.rs and
ansible_plugin/tests/test_modexec.py)."""

import base64
import hashlib
import os
import unittest
from unittest import mock

import agent_source
from test_agent import AgentProc
from wire import HELLO


def load_store():
    return agent_source.load_part('48_blob_store.py')


class BlobStoreBound(unittest.TestCase):
    def test_least_recently_used_go_past_the_bound(self):
        store = load_store()['BlobStore'](limit=30)
        store.put('a', b'x' * 10)
        store.put('b', b'y' * 10, packed='zz')  # 12 bytes with its packed form
        self.assertEqual(store.get('a'), b'x' * 10)  # a is now the most recently used
        store.put('c', b'z' * 10)  # 32 > 30: b goes (least recently used)
        self.assertEqual(store.hashes(), ['a', 'c'])
        self.assertEqual(store.size, 20)
        self.assertEqual(store.packed, {})
        store.put('big', b'w' * 100)  # over the bound alone: kept, everything else goes
        self.assertEqual(store.hashes(), ['big'])
        store.put('big', b'v' * 5)  # replaced, counted once
        self.assertEqual(store.size, 5)

    def test_the_default_bound_and_the_environment(self):
        self.assertEqual(load_store()['CODE_MAX'], 128 << 20)
        with mock.patch.dict(os.environ, {'SPINDLE_AGENT_CODE_MAX': '4096'}):
            self.assertEqual(load_store()['CODE_MAX'], 4096)


class DroppedCode(unittest.TestCase):
    def test_a_call_naming_dropped_code_gets_missing_blobs(self):
        with mock.patch.dict(os.environ, {'SPINDLE_AGENT_CODE_MAX': '2000'}):
            agent = AgentProc()
        self.addCleanup(agent.close)
        agent.take(lambda f: f.kind == HELLO)
        blobs = {}
        for i in range(3):  # 3 x 1000 bytes through a 2000-byte store: the first goes
            data = (b'# %d\n' % i) * 200
            blobs[hashlib.sha256(data).hexdigest()] = base64.b64encode(data).decode()
        first = next(iter(blobs))
        for h, b64 in blobs.items():
            obj = agent.error('run_module', blobs={h: b64}, req={}, manifest={'x.py': 'f' * 64}, mode='fork')
            self.assertEqual(obj['error'], 'missing_blobs')  # (f*64 is never there)
        obj = agent.error('run_module', req={}, manifest={'m.py': first}, mode='fork')
        self.assertEqual(obj['error'], 'missing_blobs', obj)
        self.assertIn(first, obj['message'])


if __name__ == '__main__':
    unittest.main()
