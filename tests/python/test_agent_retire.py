"""The agent retires once a task replaced its interpreter on disk (a package upgrade of
python3, `python3` now another version): after the call that did it, one REPLY with
``reply_to`` 0 and ``{"retire": why}`` (docs/protocol.md, "Retire"), and it goes on
answering what it is sent."""

import os
import shutil
import subprocess
import tempfile
import unittest

from test_agent import PYTHON, AgentProc
from wire import HELLO, REPLY


class RetireTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="spindle-retire-")
        # The program itself (PYTHON may be a name, or a pyenv shim that execs it).
        out = subprocess.check_output([PYTHON, "-c", "import sys; print(sys.executable)"])
        self.real = os.path.realpath(out.decode().strip())
        self.python = os.path.join(self.tmp, "python3")
        os.symlink(self.real, self.python)
        self.agent = AgentProc(python=self.python)
        self.agent.take(lambda f: f.kind == HELLO)

    def tearDown(self):
        self.agent.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def notices(self):
        return self.agent.peek(lambda f: f.kind == REPLY and f.reply_to == 0)

    def test_a_replaced_interpreter_is_said_once(self):
        self.assertTrue(self.agent.ok("ping")["pong"])
        self.assertEqual(self.notices(), [])
        # What dpkg does: the new program renamed over the old path.
        copy = os.path.join(self.tmp, "python3.new-build")
        shutil.copy2(self.real, copy)
        os.symlink(copy, self.python + ".tmp")
        os.replace(self.python + ".tmp", self.python)
        self.assertTrue(self.agent.ok("ping")["pong"])
        self.assertTrue(self.agent.ok("ping")["pong"])
        notices = self.notices()
        self.assertEqual(len(notices), 1, notices)
        self.assertEqual(notices[0].flags, 0)
        self.assertIn("was replaced", notices[0].json()["retire"])


if __name__ == "__main__":
    unittest.main()
