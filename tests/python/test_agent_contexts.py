"""End-to-end tests of the agent's nested contexts (spawn_context: a second agent started
through a become-like command, relayed by the first), with test_agent's harness."""

import base64
import hashlib
import os
import shutil
import signal
import tempfile
import time
import unittest
import zlib

from test_agent import TIMEOUT, AgentProc, encode
from wire import CALL, CREDIT, DATA, EOF, ERROR, HELLO, REFS, REPLY


class NestedContextTest(unittest.TestCase):
    """spawn_context: a second agent started through a (become-like) command, relayed."""

    def setUp(self):
        self.agent = AgentProc()
        self.agent.take(lambda f: f.kind == HELLO)
        self.tmp = tempfile.mkdtemp(prefix="spindle-nested-")

    def tearDown(self):
        self.agent.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def spawn(self, cmd, ctx=2, **extra):
        args = dict(ctx=ctx, cmd=cmd, success="SPINDLE-OK-1", timeout=5)
        args.update(extra)
        return self.agent.reply(self.agent.call("spawn_context", **args))

    def ctx_call(self, dst, op, **args):
        ctx = dst
        call_id = self.agent.next_id
        self.agent.next_id += 1
        args["op"] = op
        self.agent.write(encode(CALL, handle=call_id, payload=args, dst=ctx))
        frame = self.agent.take(lambda f: f.kind == REPLY and f.reply_to == call_id)
        self.assertEqual(frame.src, ctx)
        return frame.flags, frame.json()

    def test_spawn_relay_and_close(self):
        flags, obj, _ = self.spawn("echo SPINDLE-OK-1; __SPINDLE_BOOT__")
        self.assertFalse(flags & ERROR, obj)
        hello = self.agent.take(lambda f: f.kind == HELLO and f.src == 2)
        self.assertEqual(hello.json()["pid"], obj["pid"])
        flags, res = self.ctx_call(2, "exec", argv=["sh", "-c", "echo $$; echo err >&2"])
        self.assertFalse(flags & ERROR, res)
        self.assertEqual(base64.b64decode(res["stderr_b64"]), b"err\n")
        # A second context beside it; the first still answers.
        flags, obj2, _ = self.spawn("echo SPINDLE-OK-1; __SPINDLE_BOOT__", ctx=3)
        self.assertFalse(flags & ERROR, obj2)
        self.assertTrue(self.ctx_call(3, "ping")[1]["pong"])
        self.assertTrue(self.ctx_call(2, "ping")[1]["pong"])
        self.assertEqual(self.agent.ok("close_context", ctx=2), {"closed": True})
        end = self.agent.take(lambda f: f.kind == REPLY and f.src == 2 and f.flags & EOF)
        self.assertTrue(end.flags & ERROR)
        self.assertEqual(end.json()["error"], "connection_lost")
        self.assertTrue(self.ctx_call(3, "ping")[1]["pong"])
        self.assertTrue(self.agent.ok("ping")["pong"])

    def test_a_killed_context_says_how_it_ended(self):
        """A context killed on the target (its task ran ``kill -9 $PPID``) ends with its
        status in the message: the Ansible plugin gives it as the task's rc, as the shell
        gives stock's."""
        flags, obj, _ = self.spawn("echo SPINDLE-OK-1; __SPINDLE_BOOT__")
        self.assertFalse(flags & ERROR, obj)
        pid = self.ctx_call(2, "ping")[1]["pid"]
        os.kill(pid, signal.SIGKILL)
        end = self.agent.take(lambda f: f.kind == REPLY and f.src == 2 and f.flags & EOF)
        self.assertEqual(end.json()["error"], "connection_lost")
        self.assertIn("nested agent ended (killed by signal 9)", end.json()["message"])
        self.assertTrue(self.agent.ok("ping")["pong"])

    def test_stopped_context_blocks_only_itself_and_is_credited(self):
        """A context that stops reading (a slow last hop, a stuck become context) does not
        block frames for its siblings; bytes written to it are credited back (CREDIT frames
        with its id) as it reads them, and only then."""
        for ctx in (2, 3):
            flags, obj, _ = self.spawn("echo SPINDLE-OK-1; __SPINDLE_BOOT__", ctx=ctx)
            self.assertFalse(flags & ERROR, obj)
            if ctx == 2:
                stopped = obj["pid"]
        self.assertTrue(self.ctx_call(2, "ping")[1]["pong"])
        time.sleep(0.3)  # the ping's credit has gone up
        self.agent.take(lambda f: f.kind == CREDIT and f.src == 2)
        os.kill(stopped, signal.SIGSTOP)
        try:
            path = os.path.join(self.tmp, "big")
            call_id = self.agent.next_id
            self.agent.next_id += 1
            sent = [
                encode(
                    CALL, handle=call_id, dst=2, payload={"op": "put_file", "path": path, "size": 8 * 262144}
                )
            ]
            for i in range(8):
                sent.append(encode(DATA, EOF if i == 7 else 0, call_id, dst=2, payload=bytes([i]) * 262144))
            self.agent.write(b"".join(sent))  # 2 MiB: far more than its pipe holds
            start = time.monotonic()
            self.assertTrue(self.ctx_call(3, "ping")[1]["pong"])
            self.assertTrue(self.agent.ok("ping")["pong"])
            self.assertLess(time.monotonic() - start, 5)
            time.sleep(0.3)
            early = sum(f.handle for f in self.agent.peek(lambda f: f.kind == CREDIT and f.src == 2))
            self.assertLess(early, 256 * 1024, "credited before it read them")
        finally:
            os.kill(stopped, signal.SIGCONT)
        frame = self.agent.take(lambda f: f.kind == REPLY and f.reply_to == call_id)
        self.assertEqual(frame.src, 2)
        self.assertFalse(frame.flags & ERROR, frame.json())
        self.assertEqual(os.path.getsize(path), 8 * 262144)
        deadline = time.monotonic() + TIMEOUT
        total = 0
        while total < sum(len(b) for b in sent) and time.monotonic() < deadline:
            total += self.agent.take(lambda f: f.kind == CREDIT and f.src == 2).handle
        self.assertEqual(total, sum(len(b) for b in sent))

    def test_blob_refs_are_filled_from_this_agents_store(self):
        """A CALL to a context that names code blobs by hash (flag REFS) gets them from the
        agent that writes it into the context (stored once with store_blobs), split in MORE
        frames when large; credit counts the bytes as sent. A ref it lacks is an error."""
        digests = []
        for packed in (False, True):  # resolved together: larger than one frame
            data = os.urandom(5 * 512 * 1024)
            digests.append(hashlib.sha256(data).hexdigest())
            if packed:  # as the controller sends them: base64 of zlib, passed on as it came
                z = base64.b64encode(zlib.compress(data)).decode()
                self.agent.ok("store_blobs", blobs_z={digests[-1]: z})
            else:
                self.agent.ok("store_blobs", blobs={digests[-1]: base64.b64encode(data).decode()})
        flags, obj, _ = self.spawn("echo SPINDLE-OK-1; __SPINDLE_BOOT__")
        self.assertFalse(flags & ERROR, obj)
        self.assertTrue(self.ctx_call(2, "ping")[1]["pong"])
        time.sleep(0.3)
        self.agent.take(lambda f: f.kind == CREDIT and f.src == 2)
        sent = 0
        for refs in (digests, ["00" * 32]):
            call_id = self.agent.next_id
            self.agent.next_id += 1
            frame = encode(CALL, REFS, call_id, dst=2, payload={"op": "blob_list", "blob_refs": refs})
            sent += len(frame)
            self.agent.write(frame)
            reply = self.agent.take(lambda f, c=call_id: f.kind == REPLY and f.reply_to == c)
            self.assertEqual(reply.src, 2)
            if refs == digests:
                self.assertFalse(reply.flags & ERROR, reply.json())
                self.assertLessEqual(set(digests), set(reply.json()["hashes"]))
            else:
                self.assertTrue(reply.flags & ERROR)
                self.assertEqual(reply.json()["error"], "missing_blobs")
        deadline = time.monotonic() + TIMEOUT
        credited = 0
        while credited < sent and time.monotonic() < deadline:
            credited += self.agent.take(lambda f: f.kind == CREDIT and f.src == 2).handle
        self.assertEqual(credited, sent)

    def test_password_on_stderr_goes_to_stdin(self):
        cmd = (
            "printf 'Password: ' >&2; read pw; "
            "if [ \"$pw\" = s3cret ]; then echo SPINDLE-OK-1; __SPINDLE_BOOT__; fi; "
            "echo 'Sorry, try again.' >&2; printf 'Password: ' >&2; read pw; exit 1"
        )
        flags, obj, _ = self.spawn(cmd, password="s3cret", prompt="Password: ?$")
        self.assertFalse(flags & ERROR, obj)
        self.assertTrue(self.ctx_call(2, "ping")[1]["pong"])
        flags, obj, _ = self.spawn(cmd, ctx=3, password="wrong", prompt="Password: ?$")
        self.assertTrue(flags & ERROR)
        self.assertEqual(obj["error"], "incorrect_password")
        self.assertNotIn("wrong", obj["message"])
        flags, obj, _ = self.spawn(cmd, ctx=4, prompt="Password: ?$")
        self.assertEqual(obj["error"], "missing_password")

    def test_password_on_tty(self):
        cmd = (
            "printf 'Passwort: ' >/dev/tty; read pw </dev/tty; "
            "if [ \"$pw\" = s3cret ]; then echo SPINDLE-OK-1; __SPINDLE_BOOT__; fi; "
            "echo 'su: Authentication failure' >&2; exit 1"
        )
        flags, obj, _ = self.spawn(cmd, password="s3cret", prompt="(?i)(Password|Passwort)\\s*:")
        self.assertFalse(flags & ERROR, obj)
        self.assertTrue(self.ctx_call(2, "ping")[1]["pong"])
        flags, obj, _ = self.spawn(cmd, ctx=3, password="nope", prompt="(?i)Passwort\\s*:")
        self.assertEqual(obj["error"], "exited")
        self.assertIn("Authentication failure", obj["message"])
        self.assertNotIn("nope", obj["message"])

    def test_failures(self):
        flags, obj, _ = self.spawn("sleep 30; __SPINDLE_BOOT__", timeout=0.5)
        self.assertEqual(obj["error"], "timeout")
        flags, obj, _ = self.spawn("echo 'sudo: a password is required' >&2; exit 1; __SPINDLE_BOOT__", ctx=3)
        self.assertEqual(obj["error"], "exited")
        self.assertIn("a password is required", obj["message"])
        self.assertEqual(self.spawn("echo no placeholder", ctx=4)[1]["error"], "bad_request")
        self.assertEqual(self.spawn("__SPINDLE_BOOT__", ctx=1)[1]["error"], "bad_request")
        self.assertTrue(self.agent.ok("ping")["pong"])

    def test_relay_through_two_levels(self):
        """A context spawned by a context (a via hop's child): ids are kept end to end."""
        self.assertFalse(self.spawn("echo SPINDLE-OK-1; __SPINDLE_BOOT__")[0] & ERROR)
        self.agent.take(lambda f: f.kind == HELLO and f.src == 2)
        flags, obj = self.ctx_call(
            2,
            "spawn_context",
            ctx=5,
            success="SPINDLE-OK-1",
            cmd="echo SPINDLE-OK-1; __SPINDLE_BOOT__",
            timeout=5,
        )
        self.assertFalse(flags & ERROR, obj)
        hello = self.agent.take(lambda f: f.kind == HELLO and f.src == 5)
        self.assertEqual(hello.json()["pid"], obj["pid"])
        flags, res = self.ctx_call(5, "ping")
        self.assertEqual(res["pid"], obj["pid"])
        # A third level behind it.
        flags, obj7 = self.ctx_call(
            5,
            "spawn_context",
            ctx=7,
            success="SPINDLE-OK-1",
            cmd="echo SPINDLE-OK-1; __SPINDLE_BOOT__",
            timeout=5,
        )
        self.assertFalse(flags & ERROR, obj7)
        # Hops learn the route from the first frame that comes up (its HELLO).
        self.agent.take(lambda f: f.kind == HELLO and f.src == 7)
        self.assertEqual(self.ctx_call(7, "ping")[1]["pid"], obj7["pid"])
        # The first hop ends (and with it, everything behind it; the controller knows the
        # tree): its routes are forgotten, frames for the deeper ids are dropped.
        self.assertEqual(self.agent.ok("close_context", ctx=2), {"closed": True})
        end = self.agent.take(lambda f: f.kind == REPLY and f.src == 2 and f.flags & EOF)
        self.assertEqual(end.json()["error"], "connection_lost")
        self.agent.write(encode(CALL, handle=99, payload={"op": "ping"}, dst=7))
        self.assertTrue(self.agent.ok("ping")["pong"])
        self.assertEqual(self.agent.peek(lambda f: f.reply_to == 99), [])

    def test_cache_put_and_relay_put(self):
        """A hop keeps a file in RAM once and sends it to a child as the child's put_file."""
        self.assertFalse(self.spawn("echo SPINDLE-OK-1; __SPINDLE_BOOT__")[0] & ERROR)
        self.agent.take(lambda f: f.kind == HELLO and f.src == 2)
        data = os.urandom(600 * 1024 + 3)
        sha = hashlib.sha256(data).hexdigest()
        a = self.agent
        call_id = a.call("cache_put", sha256=sha, size=len(data))
        a.write(encode(DATA, 0, call_id, payload=data[:100]))
        a.write(encode(DATA, EOF, call_id, payload=data[100:]))
        flags, obj, _ = a.reply(call_id)
        self.assertFalse(flags & ERROR, obj)
        tmp = tempfile.mkdtemp(dir=os.environ.get("SPINDLE_TEST_TMP"))
        self.addCleanup(shutil.rmtree, tmp, True)
        for n in (1, 2):
            dest = os.path.join(tmp, "f%d" % n)
            handle = 500 + n
            res = a.ok(
                "relay_put",
                ctx=2,
                sha256=sha,
                handle=handle,
                call={"op": "put_file", "path": dest, "size": len(data), "mode": 0o640},
            )
            self.assertEqual(res["size"], len(data))
            frame = a.take(lambda f, h=handle: f.kind == REPLY and f.reply_to == h)
            self.assertEqual(frame.src, 2)
            self.assertEqual(frame.json()["sha256"], sha)
            with open(dest, "rb") as f:
                self.assertEqual(f.read(), data)
        self.assertEqual(a.ok("cache_drop", sha256=sha), {"dropped": True})
        self.assertEqual(
            a.error("relay_put", ctx=2, sha256=sha, handle=9, call={"op": "put_file", "path": "x"})["error"],
            "not_found",
        )
        # A wrong hash is refused.
        call_id = a.call("cache_put", sha256="0" * 64, size=3)
        a.write(encode(DATA, EOF, call_id, payload=b"abc"))
        flags, obj, _ = a.reply(call_id)
        self.assertTrue(flags & ERROR)

    def test_frames_for_unknown_context_are_dropped(self):
        self.agent.write(encode(CALL, handle=99, payload={"op": "ping"}, dst=7))
        self.assertTrue(self.agent.ok("ping")["pong"])
        self.assertEqual(self.agent.peek(lambda f: f.reply_to == 99), [])


if __name__ == "__main__":
    unittest.main()
