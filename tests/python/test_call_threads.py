"""The agent's call threads (src/agent/parts/60_main.py, CallThreads) and its memo of which
interpreter paths it is (50_modules.py, _runs_interpreter): a call finds a waiting thread
instead of starting one, calls that overlap each get a thread, at most MAX_IDLE wait and none
past IDLE_SECONDS; a module run's report does not count them as threads it left; an
interpreter path switched to another program is seen."""

import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

import agent_source


def agent_namespace():
    ns = {'__name__': 'spindle_agent_test'}
    exec(compile(agent_source.text(), '<spindle-agent>', 'exec'), ns)
    return ns


class CallThreadsTests(unittest.TestCase):
    def setUp(self):
        self.ns = agent_namespace()
        self.pool = self.ns['CallThreads']()

    def calls_threads(self):
        return [t for t in threading.enumerate() if getattr(t, 'spindle_call', False) and t.is_alive()]

    def wait_for(self, pred, timeout=5.0):
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                self.fail('timed out')
            time.sleep(0.01)

    def test_calls_in_sequence_reuse_one_thread(self):
        seen = []
        for i in range(20):
            done = threading.Event()
            self.pool.submit(
                lambda i=i, d=done: (seen.append((i, threading.current_thread())), d.set()), (), 'c%d' % i
            )
            self.assertTrue(done.wait(5))
            self.wait_for(lambda: self.pool._idle == 1)
        self.assertEqual([i for i, _ in seen], list(range(20)))
        self.assertEqual(len(set(t for _, t in seen)), 1)
        self.assertEqual(seen[0][1].name, 'idle')  # named for its call while it runs one

    def test_overlapping_calls_each_get_a_thread_and_at_most_max_idle_wait(self):
        n = self.pool.MAX_IDLE + 3
        gate, started = threading.Event(), []
        lock = threading.Lock()

        def call():
            with lock:
                started.append(threading.current_thread())
            gate.wait(5)

        for i in range(n):
            self.pool.submit(call, (), 'c%d' % i)
        self.wait_for(lambda: len(started) == n)  # none waited for another
        self.assertEqual(len(set(started)), n)
        gate.set()
        self.wait_for(lambda: self.pool._idle == self.pool.MAX_IDLE)
        self.wait_for(lambda: sum(1 for t in started if t.is_alive()) == self.pool.MAX_IDLE)

    def test_a_waiting_thread_ends_after_idle_seconds(self):
        self.pool.IDLE_SECONDS = 0.2
        done = threading.Event()
        self.pool.submit(done.set, (), 'c')
        self.assertTrue(done.wait(5))
        self.wait_for(lambda: self.pool._idle == 1)
        self.wait_for(lambda: self.pool._idle == 0)
        again = threading.Event()
        self.pool.submit(again.set, (), 'c2')  # a new thread starts: nothing is lost
        self.assertTrue(again.wait(5))

    def test_a_module_runs_report_does_not_count_call_threads(self):
        modrun = agent_source.load_modrun()
        state = modrun.ProcessState()
        state.save()
        done = threading.Event()
        self.pool.submit(done.set, (), 'during-the-run')  # a call thread started during a run
        self.assertTrue(done.wait(5))
        stray = threading.Thread(target=time.sleep, args=(0.5,), name='left-by-module')
        stray.start()
        report = state.restore()
        stray.join()
        self.assertEqual(report.get('threads_left'), ['left-by-module'])


class RunsInterpreterTests(unittest.TestCase):
    def test_a_path_switched_to_another_program_is_seen(self):
        ns = agent_namespace()
        work = tempfile.mkdtemp(prefix='spindle-interp-')
        self.addCleanup(shutil.rmtree, work, True)
        link = os.path.join(work, 'python3')
        os.symlink(os.path.realpath(sys.executable), link)
        self.assertTrue(ns['_runs_interpreter'](link))
        self.assertTrue(ns['_runs_interpreter'](link))  # from the memo
        other = os.path.join(work, 'other')
        shutil.copy(os.path.realpath(sys.executable), other)
        os.unlink(link)
        os.symlink(other, link)  # as update-alternatives switches it
        self.assertFalse(ns['_runs_interpreter'](link))
        self.assertFalse(ns['_runs_interpreter'](os.path.join(work, 'missing')))
        self.assertFalse(ns['_runs_interpreter'](None))


if __name__ == '__main__':
    unittest.main()
