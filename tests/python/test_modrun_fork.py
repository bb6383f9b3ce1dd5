"""src/agent/modrun/: a module run forked while another thread of the agent is in the middle
of an import (an in-process run alongside it) must not deadlock on that import's lock in the
child, nor see its half-executed module (delegate_to localhost from several hosts: the local
agent runs one module in-process and forks the others)."""

import importlib
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

import agent_source


class ForkDuringImport(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix='spindle-fork-')
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.addCleanup(lambda: sys.path.remove(self.dir) if self.dir in sys.path else None)
        sys.path.insert(0, self.dir)
        # Importing this module blocks until told to go on: its import lock stays held.
        with open(os.path.join(self.dir, 'spx_slow_import.py'), 'w') as f:
            f.write('import spx_gate\nspx_gate.entered.set()\nspx_gate.go.wait()\nVALUE = 42\n')
        gate = type(sys)('spx_gate')
        gate.entered, gate.go = threading.Event(), threading.Event()
        sys.modules['spx_gate'] = gate
        self.addCleanup(sys.modules.pop, 'spx_gate', None)
        self.addCleanup(sys.modules.pop, 'spx_slow_import', None)
        self.gate = gate

    def fork_and_import(self, reset):
        modrun = agent_source.load_modrun()
        t = threading.Thread(target=importlib.import_module, args=('spx_slow_import',), daemon=True)
        t.start()
        self.assertTrue(self.gate.entered.wait(5))
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                if reset:
                    modrun._reset_imports_after_fork()
                self.gate.go.set()  # (the child's own copy: its importing thread is gone)
                mod = importlib.import_module('spx_slow_import')
                code = 0 if mod.VALUE == 42 else 4
            finally:
                os._exit(code)
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
                time.sleep(0.02)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return None  # deadlocked
        finally:
            self.gate.go.set()
            t.join(5)

    def test_the_child_imports_afresh(self):
        self.assertEqual(self.fork_and_import(reset=True), 0)

    def test_without_the_reset_the_child_deadlocks(self):
        # What the reset is for (CPython keeps per-module import locks across fork).
        self.assertIsNone(self.fork_and_import(reset=False))


if __name__ == '__main__':
    unittest.main()
