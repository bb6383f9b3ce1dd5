"""End-to-end tests of the agent's file-side module ops: copy_fast's "stock" answers and
run_module with a `file` (old-style, WANT_JSON and binary modules from a private temp dir),
with test_agent's harness."""

import base64
import hashlib
import os
import shutil
import stat
import tempfile
import unittest

from test_agent import AgentProc
from wire import HELLO


class CopyFastTest(unittest.TestCase):
    """copy_fast answers "stock" (nothing changed) where Ansible's copy action takes other
    steps; the module runs themselves are exercised through Ansible (tests/ansible)."""

    def setUp(self):
        self.agent = AgentProc()
        self.agent.take(lambda f: f.kind == HELLO)
        self.tmp = tempfile.mkdtemp(prefix="spindle-copyfast-", dir=os.environ.get("SPINDLE_TEST_TMP"))

    def tearDown(self):
        self.agent.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def call(self, dest, staged, follow=True):
        return self.agent.ok(
            "copy_fast",
            dest=dest,
            follow=follow,
            checksum="0" * 40,
            staged=staged,
            data_b64=base64.b64encode(b"x").decode(),
            copy={"req": {}, "manifest": {}},
            file={"req": {}, "manifest": {}},
        )

    def test_directory_destination_is_left_to_the_action(self):
        r = self.call(self.tmp, os.path.join(self.tmp, "t", "s", ".source"))
        self.assertEqual(r, {"outcome": "stock"})
        self.assertEqual(os.listdir(self.tmp), [])

    def test_unusable_staging_dir_is_left_to_the_action(self):
        blocker = os.path.join(self.tmp, "file")
        with open(blocker, "w") as f:
            f.write("not a dir")
        r = self.call(os.path.join(self.tmp, "dest"), os.path.join(blocker, "s", ".source"))
        self.assertEqual(r, {"outcome": "stock"})
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "dest")))

    def test_bad_request(self):
        obj = self.agent.error("copy_fast", dest=1)
        self.assertEqual(obj["error"], "bad_request")


class FileModuleTest(unittest.TestCase):
    """run_module with `file`: an old-style, WANT_JSON or binary module run from a private
    temp dir the agent makes, fills, runs in and removes (one call)."""

    PH = "/spindle-deferred-tmp/ansible-tmp-1-2-3"

    def setUp(self):
        self.agent = AgentProc()
        self.agent.take(lambda f: f.kind == HELLO)
        self.tmp = tempfile.mkdtemp(prefix="spindle-filemod-", dir=os.environ.get("SPINDLE_TEST_TMP"))

    def tearDown(self):
        self.agent.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def call(self, shell, base, module=b"", args=b"", **extra):
        sha = hashlib.sha256(module).hexdigest()
        spec = {
            "tmp": self.PH,
            "base": base,
            "name": "ansible-tmp-1-2-3",
            "shell": shell,
            "files": [
                {"name": "AnsiballZ_mod", "mode": 0o600, "sha": sha},
                {"name": "args", "mode": 0o600, "data_b64": base64.b64encode(args).decode()},
            ],
        }
        spec.update(extra)
        return self.agent.ok(
            "run_module",
            mode="fork",
            file=spec,
            manifest={"AnsiballZ_mod": sha},
            blobs={sha: base64.b64encode(module).decode()},
        )

    def test_module_runs_from_a_private_dir_that_is_removed(self):
        module = b'#!/bin/sh\n. "$1"\necho "color=$color size=$size"\necho oops >&2\nexit 3\n'
        base = os.path.join(self.tmp, "home", ".ansible", "tmp")
        shell = (
            "/bin/sh -c '/bin/sh %s/AnsiballZ_mod %s/args; rc=$?; stat -c %%a %s %s/AnsiballZ_mod %s/args; exit $rc'"
            % ((self.PH,) * 5)
        )
        r = self.call(shell, base, module, b"color=red size=3 ", cwd=self.tmp)
        out = base64.b64decode(r["stdout_b64"]).decode()
        self.assertEqual(r["rc"], 3, r)
        self.assertEqual(out.splitlines(), ["color=red size=3", "700", "700", "700"])
        self.assertEqual(base64.b64decode(r["stderr_b64"]), b"oops\n")
        self.assertEqual(os.listdir(base), [])  # the dir is gone, its parents stay (0700)
        self.assertEqual(stat.S_IMODE(os.stat(base).st_mode), 0o700)

    def test_variables_in_the_base_are_expanded_and_the_real_path_is_in_the_command(self):
        r = self.call("echo %s/args" % self.PH, os.path.join(self.tmp, "$SPINDLE_INHERITED", "t"))
        self.assertEqual(r["rc"], 0, r)
        out = base64.b64decode(r["stdout_b64"]).decode().strip()
        self.assertEqual(out, os.path.join(self.tmp, "agent-env", "t", "ansible-tmp-1-2-3", "args"))
        self.assertFalse(os.path.exists(os.path.dirname(out)))

    def test_a_dir_that_cannot_be_made_runs_nothing(self):
        blocker = os.path.join(self.tmp, "file")
        with open(blocker, "w") as f:
            f.write("x")
        r = self.call(
            "touch %s; : %s" % (os.path.join(self.tmp, "ran"), self.PH), os.path.join(blocker, "sub")
        )
        self.assertIn("tmp_failed", r)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "ran")))

    def test_a_dir_that_would_need_quoting_runs_nothing(self):
        r = self.call("true %s" % self.PH, os.path.join(self.tmp, "a b"))
        self.assertIn("shell quoting", r["tmp_failed"])
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "a b")))

    def test_bad_requests(self):
        for spec in (
            {"tmp": self.PH, "base": "/tmp", "name": "../x", "shell": self.PH, "files": []},
            {"tmp": self.PH, "base": "/tmp", "name": "ansible-tmp-1", "shell": "true", "files": []},
            {
                "tmp": self.PH,
                "base": "/tmp",
                "name": "ansible-tmp-1",
                "shell": self.PH,
                "files": [{"name": "a/b"}],
            },
            {
                "tmp": self.PH,
                "base": "/tmp",
                "name": "ansible-tmp-1",
                "shell": self.PH,
                "files": [{"name": "m", "sha": "0" * 64}],
            },
        ):
            obj = self.agent.error("run_module", mode="fork", file=spec, manifest={})
            self.assertEqual(obj["error"], "bad_request", spec)


if __name__ == "__main__":
    unittest.main()
