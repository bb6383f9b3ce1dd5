"""src/agent/modrun/: async tasks (``async: N``) as Ansible's async_wrapper runs them: the job's
status file where and as async_wrapper writes it, a detached job that outlives its starter, the
time limit enforced at async_wrapper's check points, and the result built from the module's
output exactly as async_wrapper builds it. Standard library only (Python 3.8 to 3.13)."""

import json
import os
import shutil
import signal
import tempfile
import time
import unittest

import agent_source

modrun = agent_source.load_modrun('spindle_modrun_async')

# A v1 (2.18-style) payload with a fake ansible.module_utils.basic: enough for modrun's runner.
MODULE = b'''
import json, os, sys, time
from ansible.module_utils import basic
args = json.loads(basic._ANSIBLE_ARGS)['ANSIBLE_MODULE_ARGS']
if args.get('chdir'):
    os.chdir(args['chdir'])
os.umask(0o077)
if args.get('junk'):
    print('junk before')
if args.get('nojson'):
    print('no json here')
    sys.exit(1)
mask = os.umask(0); os.umask(mask)
time.sleep(args.get('sleep', 0))
print(json.dumps({'changed': True, 'pid': os.getpid(), 'sid': os.getsid(0), 'pgid': os.getpgid(0),
                  'env': os.environ.get('SPX_VAR'), 'async_dir': os.environ.get('ANSIBLE_ASYNC_DIR'),
                  'stdin': sys.stdin.read(), 'warnings': args.get('warnings', [])}))
if args.get('stderr'):
    sys.stderr.write('some\\r\\nstderr\\n')
if args.get('trailing'):
    print(args['trailing'])
sys.exit(0)
'''
FILES = {
    'ansible/__init__.py': b'',
    'ansible/module_utils/__init__.py': b'',
    'ansible/module_utils/basic.py': b'_ANSIBLE_ARGS = None\n',
    'ansible/modules/__init__.py': b'',
    'ansible/modules/spx_job.py': MODULE,
}


def request(args, env=None):
    return {
        'dialect': 'v1',
        'module_fqn': 'ansible.modules.spx_job',
        'profile': None,
        'params': json.dumps({'ANSIBLE_MODULE_ARGS': args}),
        'env': env or {},
    }


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not running any more
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


class AsyncJob(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='spindle-async-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.async_dir = os.path.join(self.dir, 'jobs')
        self.pids = []
        self.addCleanup(self.kill_left)

    def kill_left(self):
        for pid in self.pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass

    def start(self, args, limit=30, ints=False, env=None):
        env = dict(env or {}, ANSIBLE_ASYNC_DIR=self.async_dir)
        t0 = time.monotonic()
        r = modrun.start_async(request(args, env), dict(FILES), {'jid': 'j123', 'limit': limit, 'ints': ints})
        took = time.monotonic() - t0
        self.assertLess(took, 2.0, 'the start returns at once, not when the job ends')
        self.assertEqual(r['stderr'], b'')
        self.assertTrue(r['stdout'].endswith(b'\n'))
        return r, json.loads(r['stdout'].decode())

    def wait_final(self, path, seconds=15):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with open(path) as f:
                data = json.load(f)
            if 'started' not in data:
                return data
            time.sleep(0.05)
        self.fail('the job did not finish: %s' % data)

    def test_started_reply_status_file_and_result(self):
        r, out = self.start({'sleep': 0.5, 'stderr': True}, env={'SPX_VAR': 'x1'})
        self.assertEqual(r['rc'], 0)
        jid = out['ansible_job_id']
        self.assertRegex(jid, r'^j123\.\d+$')
        path = os.path.join(self.async_dir, jid)
        # async_wrapper's own output, keys in its order
        self.assertEqual(
            list(out),
            [
                'failed',
                'started',
                'finished',
                'ansible_job_id',
                'results_file',
                '_ansible_suppress_tmpdir_delete',
            ],
        )
        self.assertEqual((out['failed'], out['started'], out['finished']), (False, True, False))
        self.assertEqual(out['results_file'], path)
        # the first status is there before the reply
        with open(path) as f:
            first = json.load(f)
        self.assertEqual(first, {'started': True, 'finished': False, 'ansible_job_id': jid})
        final = self.wait_final(path)
        self.pids.append(final['pid'])
        self.assertTrue(final['changed'])
        self.assertEqual(final['env'], 'x1')
        self.assertEqual(final['async_dir'], self.async_dir)
        self.assertEqual(final['stdin'], '')
        self.assertEqual(final['stderr'], 'some\nstderr\n')  # universal newlines, as async_wrapper reads it
        self.assertNotEqual(final['sid'], os.getsid(0), 'the job has a session of its own')
        self.assertEqual(final['pgid'], final['pid'], 'the module leads its process group')
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644, 'written under umask 022')
        self.assertFalse(os.path.exists(path + '.tmp'))

    def test_2_18_flags_are_ints(self):
        r, out = self.start({}, ints=True)
        self.assertEqual((out['failed'], out['started'], out['finished']), (0, 1, 0))
        path = out['results_file']
        self.wait_final(path)

    def test_relative_async_dir_and_module_changing_directory(self):
        cwd = os.getcwd()
        os.chdir(self.dir)
        self.addCleanup(os.chdir, cwd)
        r = modrun.start_async(
            request({'chdir': '/', 'sleep': 0.2}, {'ANSIBLE_ASYNC_DIR': 'rel-jobs'}),
            dict(FILES),
            {'jid': 'j7', 'limit': 30},
        )
        out = json.loads(r['stdout'].decode())
        self.assertEqual(out['results_file'], os.path.join('rel-jobs', out['ansible_job_id']))
        final = self.wait_final(os.path.join(self.dir, out['results_file']))
        self.assertTrue(final['changed'])

    def test_time_limit(self):
        r, out = self.start({'sleep': 60}, limit=2)
        path = out['results_file']
        t0 = time.monotonic()
        final = self.wait_final(path, 10)
        took = time.monotonic() - t0
        # async_wrapper: checks every limit/2 s, kills at the limit, records 1 s later
        self.assertGreater(took, 2.5)
        self.assertLess(took, 6)
        self.assertEqual(set(final), {'msg', 'failed', 'child_pid'})
        self.assertEqual((final['msg'], final['failed']), ('Timeout exceeded', True))
        self.assertFalse(alive(final['child_pid']))

    def test_output_without_json(self):
        r, out = self.start({'nojson': True})
        final = self.wait_final(out['results_file'])
        self.assertTrue(final['failed'])
        self.assertEqual(final['ansible_job_id'], out['ansible_job_id'])
        self.assertEqual(final['data'], 'no json here\n')
        self.assertIn('No start of json char found', final['msg'])

    def test_junk_before_json_and_module_warnings(self):
        r, out = self.start({'junk': True, 'trailing': 'after', 'warnings': ['w1']})
        final = self.wait_final(out['results_file'])
        self.assertEqual(final['warnings'], ['w1', 'Module invocation had junk after the JSON data: after'])

    def test_status_directory_that_cannot_be_made(self):
        blocker = os.path.join(self.dir, 'file')
        open(blocker, 'w').close()
        r = modrun.start_async(
            request({}, {'ANSIBLE_ASYNC_DIR': os.path.join(blocker, 'jobs')}),
            dict(FILES),
            {'jid': 'j1', 'limit': 5},
        )
        self.assertEqual(r['rc'], 1)
        out = json.loads(r['stdout'].decode())
        self.assertTrue(out['failed'])
        self.assertTrue(out['msg'].startswith('could not create directory: %s/jobs - ' % blocker), out['msg'])


class Pieces(unittest.TestCase):
    def test_filter_non_json_lines(self):
        f = modrun.filter_non_json_lines
        self.assertEqual(f('x\n{"a": 1}\n'), ('{"a": 1}', []))
        self.assertEqual(
            f('{"a": 1}\n\n  \n'), ('{"a": 1}', ['Module invocation had junk after the JSON data: \n  '])
        )
        self.assertEqual(f('{"a": 1}\n\n  \n', blank_junk=False), ('{"a": 1}', []))
        with self.assertRaises(ValueError):
            f('nothing')

    def test_job_result(self):
        r = modrun.job_result('\n{"changed": false, "warnings": "one"}\njunk', 'err', 'j1.2', 'c')
        self.assertEqual(
            r,
            {
                'changed': False,
                'stderr': 'err',
                'warnings': ['one', 'Module invocation had junk after the JSON data: junk'],
            },
        )
        r = modrun.job_result('[1]', '', 'j1.2', 'c', ints=True)  # not an object: as async_wrapper
        self.assertEqual((r['failed'], r['ansible_job_id'], r['cmd'], r['data']), (1, 'j1.2', 'c', '[1]'))

    def test_watcher_schedule(self):
        d = tempfile.mkdtemp(prefix='spindle-watch-')
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, 'job')
        # a child that ends before the limit: not killed, the watcher returns when it ends
        pid = os.fork()
        if pid == 0:
            time.sleep(0.3)
            os._exit(0)
        t0 = time.monotonic()
        self.assertFalse(modrun.watch_job(pid, 10, path, step=5, grace=0))
        self.assertLess(time.monotonic() - t0, 3)
        self.assertFalse(os.path.exists(path))
        # limit 3 with 5 s steps: checks every 1.5 s, killed at the second check (3 s)
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            time.sleep(30)
            os._exit(0)
        os.setpgid(pid, pid) if os.getpgid(pid) != pid else None
        t0 = time.monotonic()
        self.assertTrue(modrun.watch_job(pid, 3, path, step=5, grace=0.1))
        took = time.monotonic() - t0
        self.assertGreater(took, 2.9)
        self.assertLess(took, 5)
        with open(path) as f:
            self.assertEqual(json.load(f), {'msg': 'Timeout exceeded', 'failed': True, 'child_pid': pid})
        # limit 0 (gather_facts' parallel jobs): killed at the first check, one step
        pid = os.fork()
        if pid == 0:
            os.setpgid(0, 0)
            time.sleep(30)
            os._exit(0)
        os.setpgid(pid, pid) if os.getpgid(pid) != pid else None
        t0 = time.monotonic()
        self.assertTrue(modrun.watch_job(pid, 0, path, step=0.5, grace=0))
        self.assertLess(time.monotonic() - t0, 2)


class AgentChecksTheJob(unittest.TestCase):
    def test_async_job_is_range_checked(self):
        import agent_source

        ns = {'__name__': 'spindle_agent_test'}
        exec(compile(agent_source.text(), 'agent', 'exec'), ns)
        check = ns['_async_job']
        self.assertEqual(
            check({'jid': 'j0', 'limit': 0}), {'jid': 'j0', 'limit': 0, 'ints': False, 'blank_junk': True}
        )
        self.assertEqual(check({'jid': 'j999999999999', 'limit': 2**31 - 1, 'ints': 1})['ints'], True)
        for bad in (
            {'jid': 'x1', 'limit': 1},
            {'jid': 'j', 'limit': 1},
            {'jid': 'j1234567890123', 'limit': 1},
            {'jid': 'j1.2', 'limit': 1},
            {'jid': 'j1', 'limit': -1},
            {'jid': 'j1', 'limit': 2**31},
            {'jid': 'j1', 'limit': True},
            {'jid': 'j1', 'limit': 1.5},
            {'jid': 1, 'limit': 1},
            [],
        ):
            with self.assertRaises(ns['AgentError'], msg=bad):
                check(bad)


if __name__ == '__main__':
    unittest.main()
