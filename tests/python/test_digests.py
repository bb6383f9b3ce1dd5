"""Digests a put takes while its content is received (put_file `digests`, src/agent/parts/
22_digests.py), the memo the module runner's AnsibleModule.digest_from_file reads them from
(src/agent/modrun/), and copy_stream deciding by size before the controller's checksum."""

import hashlib
import os
import shutil
import tempfile
import types
import unittest

import agent_source
from test_agent import AgentProc, encode
from wire import DATA, EOF, ERROR, HELLO


def load_digests():
    return agent_source.load_part('22_digests.py')


class PutDigests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='spindle-digests-', dir=os.environ.get('SPINDLE_TEST_TMP'))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.agent = AgentProc()
        self.addCleanup(self.agent.close)
        self.agent.take(lambda f: f.kind == HELLO)

    def put(self, path, data, **args):
        a = self.agent
        call_id = a.call('put_file', path=path, size=len(data), **args)
        step = 256 * 1024
        chunks = [data[i : i + step] for i in range(0, len(data), step)] or [b'']
        for i, chunk in enumerate(chunks):
            a.write(encode(DATA, EOF if i == len(chunks) - 1 else 0, call_id, payload=chunk))
        return a.reply(call_id)

    def test_the_digests_asked_for_replace_sha256_small_and_threaded(self):
        for size in (1000, (5 << 20) + 3):  # inline, and on the hashing thread (>= 4 MiB)
            data = os.urandom(size)
            dest = os.path.join(self.tmp, 'f%d' % size)
            flags, obj, _ = self.put(dest, data, digests=['sha1', 'md5'], sync=False)
            self.assertFalse(flags & ERROR, obj)
            want = {
                'path': dest,
                'size': size,
                'sha1': hashlib.sha1(data).hexdigest(),
                'md5': hashlib.md5(data).hexdigest(),
            }
            self.assertEqual(obj, want)
            with open(dest, 'rb') as f:
                self.assertEqual(f.read(), data)

    def test_default_is_sha256_and_unknown_digests_are_refused(self):
        dest = os.path.join(self.tmp, 'd')
        flags, obj, _ = self.put(dest, b'abc')
        self.assertEqual(obj['sha256'], hashlib.sha256(b'abc').hexdigest())
        flags, obj, _ = self.put(os.path.join(self.tmp, 'e'), b'abc', digests=['crc32'])
        self.assertTrue(flags & ERROR)
        self.assertEqual(obj['error'], 'bad_request')
        self.assertFalse(os.path.exists(os.path.join(self.tmp, 'e')))

    def test_a_failed_threaded_put_leaves_nothing(self):
        dest = os.path.join(self.tmp, 'big')
        call_id = self.agent.call('put_file', path=dest, size=6 << 20, digests=['sha1'])
        self.agent.write(encode(DATA, 0, call_id, payload=b'x' * (1 << 20)))
        self.agent.write(encode(DATA, EOF, call_id, payload=b'y'))
        flags, obj, _ = self.agent.reply(call_id)
        self.assertTrue(flags & ERROR)
        self.assertIn('declared size', obj['message'])
        self.assertEqual(os.listdir(self.tmp), [])


class CopyStreamBySize(unittest.TestCase):
    """copy_stream's first call may come before the controller's checksum: the size decides
    when it can."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='spindle-cstream-', dir=os.environ.get('SPINDLE_TEST_TMP'))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.agent = AgentProc()
        self.addCleanup(self.agent.close)
        self.agent.take(lambda f: f.kind == HELLO)

    def first_call(self, dest, size):
        return self.agent.ok(
            'copy_stream',
            dest=dest,
            follow=True,
            checksum=None,
            size=size,
            staged=os.path.join(self.tmp, '.staged'),
            copy={'req': {}, 'manifest': {}},
            file={'req': {}, 'manifest': {}},
        )

    def test_missing_or_other_size_is_sent_same_size_asks_for_the_checksum(self):
        dest = os.path.join(self.tmp, 'dest')
        self.assertEqual(self.first_call(dest, 10), {'outcome': 'send'})
        with open(dest, 'wb') as f:
            f.write(b'0123456789')
        self.assertEqual(self.first_call(dest, 11), {'outcome': 'send'})
        self.assertEqual(self.first_call(dest, 10), {'outcome': 'checksum'})
        self.assertEqual(sorted(os.listdir(self.tmp)), ['dest'])  # nothing staged nor changed

    def test_without_size_the_checksum_is_required(self):
        obj = self.agent.error(
            'copy_stream',
            dest=os.path.join(self.tmp, 'd'),
            checksum=None,
            staged=os.path.join(self.tmp, '.s'),
            copy={'req': {}},
            file={'req': {}},
        )
        self.assertEqual(obj['error'], 'bad_request')


class DigestMemo(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='spindle-memo-', dir=os.environ.get('SPINDLE_TEST_TMP'))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.ns = load_digests()
        self.memo = self.ns['DigestMemo']()
        self.path = os.path.join(self.tmp, 'f')
        with open(self.path, 'wb') as f:
            f.write(b'content')

    def test_a_recorded_file_answers_until_it_changes(self):
        self.memo.record(self.path, {'sha1': 'S', 'md5': 'M'})
        self.assertEqual(self.memo.lookup(self.path, 'sha1'), 'S')
        self.assertEqual(self.memo.lookup(self.path.encode(), 'md5'), 'M')  # bytes paths too
        self.assertIsNone(self.memo.lookup(self.path, 'sha256'))
        os.chmod(self.path, 0o600)  # ctime moves: the memo no longer answers
        self.assertIsNone(self.memo.lookup(self.path, 'sha1'))
        self.assertIsNone(self.memo.lookup(os.path.join(self.tmp, 'missing'), 'sha1'))

    def test_bounded(self):
        paths = []
        for i in range(self.memo.MAX + 5):
            p = os.path.join(self.tmp, 'g%d' % i)
            with open(p, 'w') as f:
                f.write(str(i))
            self.memo.record(p, {'sha1': str(i)})
            paths.append(p)
        self.assertEqual(len(self.memo._entries), self.memo.MAX)
        self.assertIsNone(self.memo.lookup(paths[0], 'sha1'))
        self.assertEqual(self.memo.lookup(paths[-1], 'sha1'), str(self.memo.MAX + 4))

    def test_the_module_runner_reads_the_memo_through_digest_from_file(self):
        modrun = agent_source.load_modrun()
        calls = []

        class AnsibleModule(object):
            def digest_from_file(self, filename, algorithm):
                calls.append((filename, algorithm))
                return 'read'

        basic = types.ModuleType('ansible.module_utils.basic')
        basic.AnsibleModule = AnsibleModule
        modrun._memo_digests(basic)
        modrun._memo_digests(basic)  # once only
        m = AnsibleModule()
        self.assertEqual(m.digest_from_file(self.path, 'sha1'), 'read')  # no memo yet
        modrun.DIGESTS = self.memo
        self.memo.record(self.path, {'sha1': 'from-the-put'})
        self.assertEqual(m.digest_from_file(self.path, 'sha1'), 'from-the-put')
        self.assertEqual(m.digest_from_file(self.path, 'md5'), 'read')
        self.assertEqual(m.digest_from_file(self.path, hashlib.sha1()), 'read')  # an object: read
        self.assertEqual(len(calls), 3)


if __name__ == '__main__':
    unittest.main()
