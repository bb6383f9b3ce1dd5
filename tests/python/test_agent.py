"""End-to-end tests of the agent (src/agent/parts/, joined as the controller joins them): the agent is started the way the controller
starts it (python3 -c STAGE1, compressed source on stdin) and spoken to in frames.

SPINDLE_TEST_PYTHON picks the interpreter (default python3); SPINDLE_TEST_TMP the parent
directory of temp dirs.
"""

import base64
import hashlib
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import zlib

import agent_source

# The wire constants, from the agent's block generated from src/proto (wire.py).
from wire import (
    ABORT,
    CALL,
    DATA,
    EOF,
    ERROR,
    HEADER,
    HELLO,
    LOG,
    MAX_PAYLOAD,
    MORE,
    REPLY,
    SIZE,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.environ.get("SPINDLE_TEST_PYTHON", "python3")


OUTPUT_MAX = 44 * 1024 * 1024  # the agent's cap on an exec's stdout + stderr
TIMEOUT = 10.0

STAGE1 = """import os,zlib
n=%d;b=b""
while len(b)<n:
 c=os.read(0,n-len(b))
 if not c:raise SystemExit(1)
 b+=c
exec(compile(zlib.decompress(b),"<spindle-agent>","exec"))
"""


def encode(kind, flags=0, handle=0, reply_to=0, payload=b"", dst=1, src=0, magic=b"SP"):
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    return HEADER.pack(magic, kind, flags, len(payload), dst, src, handle, reply_to) + payload


class Frame(object):
    def __init__(self, kind, flags, length, dst, src, handle, reply_to, payload):
        self.kind, self.flags, self.length = kind, flags, length
        self.dst, self.src, self.handle, self.reply_to = dst, src, handle, reply_to
        self.payload = payload

    def json(self):
        return json.loads(self.payload.decode())

    def __repr__(self):
        return "Frame(kind=%d flags=%d handle=%d reply_to=%d len=%d)" % (
            self.kind,
            self.flags,
            self.handle,
            self.reply_to,
            self.length,
        )


def read_exact(f, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def decode_stream(f):
    """Yield frames from a binary file object until end of file."""
    while True:
        head = read_exact(f, HEADER.size)
        if head is None:
            return
        magic, kind, flags, length, dst, src, handle, reply_to = HEADER.unpack(head)
        assert magic == b"SP", "bad magic %r" % magic
        assert length <= MAX_PAYLOAD
        payload = read_exact(f, length) if length else b""
        assert payload is not None, "truncated frame"
        yield Frame(kind, flags, length, dst, src, handle, reply_to, payload)


class AgentProc(object):
    """A running agent plus a reader thread that collects its frames."""

    def __init__(self, first_frames=b"", python=PYTHON):
        blob = zlib.compress(agent_source.text().encode("utf-8"), 9)
        self.proc = subprocess.Popen(
            [python, "-c", STAGE1 % len(blob)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, SPINDLE_INHERITED="agent-env"),
        )
        self.frames = []
        self.cond = threading.Condition()
        self.stdout_closed = False
        self.stderr = bytearray()
        self.next_id = 1
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        self.write(blob + first_frames)  # frames may be pipelined right after the agent

    def _read(self):
        try:
            for frame in decode_stream(self.proc.stdout):
                with self.cond:
                    self.frames.append(frame)
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.stdout_closed = True
                self.cond.notify_all()

    def _read_stderr(self):
        while True:
            chunk = (
                self.proc.stderr.read1(65536)
                if hasattr(self.proc.stderr, "read1")
                else self.proc.stderr.read(1)
            )
            if not chunk:
                return
            self.stderr += chunk

    def write(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def take(self, pred, timeout=TIMEOUT):
        """Remove and return the first frame matching pred, waiting for it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i, frame in enumerate(self.frames):
                    if pred(frame):
                        return self.frames.pop(i)
                left = deadline - time.monotonic()
                if left <= 0 or self.stdout_closed:
                    raise AssertionError(
                        "no matching frame; have %r; stderr %r" % (self.frames, bytes(self.stderr))
                    )
                self.cond.wait(left)

    def peek(self, pred):
        with self.cond:
            return [f for f in self.frames if pred(f)]

    def call(self, op, **args):
        call_id = self.next_id
        self.next_id += 1
        args["op"] = op
        self.write(encode(CALL, handle=call_id, payload=args))
        return call_id

    def reply(self, call_id, timeout=TIMEOUT):
        """Return (flags of the last frame, decoded JSON, [frames]) for a reply."""
        frames = []
        while True:
            frame = self.take(lambda f: f.kind == REPLY and f.reply_to == call_id, timeout)
            frames.append(frame)
            if not frame.flags & MORE:
                break
        obj = json.loads(b"".join(f.payload for f in frames).decode())
        return frames[-1].flags, obj, frames

    def ok(self, op, **args):
        flags, obj, _ = self.reply(self.call(op, **args))
        assert not flags & ERROR, "%s failed: %r" % (op, obj)
        return obj

    def error(self, op, **args):
        flags, obj, _ = self.reply(self.call(op, **args))
        assert flags & ERROR, "%s should fail: %r" % (op, obj)
        return obj

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc.stderr.close()


def run(agent, **call):
    res = agent.ok("exec", **call)
    res["stdout"] = base64.b64decode(res.pop("stdout_b64"))
    res["stderr"] = base64.b64decode(res.pop("stderr_b64"))
    return res


def pid_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # zombie: dead
    except OSError:
        return True


class AgentTest(unittest.TestCase):
    def setUp(self):
        parent = os.environ.get("SPINDLE_TEST_TMP") or None
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="spindle-agent-test-", dir=parent)
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.agent = AgentProc()
        self.addCleanup(self.agent.close)
        self.hello = self.agent.take(lambda f: f.kind == HELLO).json()

    def put(self, path, chunks, size=None, **args):
        """Run a put_file with the given DATA chunks (last one sent with EOF)."""
        a = self.agent
        if size is None:
            size = sum(len(c) for c in chunks)
        call_id = a.call("put_file", path=path, size=size, **args)
        for i, chunk in enumerate(chunks):
            a.write(encode(DATA, EOF if i == len(chunks) - 1 else 0, call_id, payload=chunk))
        return a.reply(call_id)

    # ---- start-up ----------------------------------------------------------------

    def test_hello(self):
        h = self.hello
        self.assertEqual(h["proto"], 1)
        self.assertEqual(h["pid"], self.agent.proc.pid)
        self.assertEqual(h["uid"], os.getuid())
        self.assertEqual(h["hostname"], socket.gethostname())
        self.assertTrue(os.path.isabs(h["executable"]))
        self.assertRegex(h["python"], r"^3\.\d+\.\d+")
        # other paths of the same program: each resolves to it, the executable is not one
        self.assertLessEqual(len(h["aliases"]), 16)
        self.assertNotIn(h["executable"], h["aliases"])
        for p in h["aliases"]:
            self.assertEqual(os.path.realpath(p), os.path.realpath(h["executable"]), p)

    def test_hello_in_a_venv_lists_the_venvs_other_names(self):
        # A venv's python3 (as a login PATH finds it) and the python3.X discovery finds
        # beside it are one interpreter: the daemon matches the HELLO's aliases.
        venv = os.path.join(self.tmp, "v")
        subprocess.run([PYTHON, "-m", "venv", "--without-pip", venv], check=True)
        a = AgentProc(python=os.path.join(venv, "bin", "python3"))
        try:
            h = a.take(lambda f: f.kind == HELLO).json()
        finally:
            a.close()
        self.assertEqual(h["executable"], os.path.join(venv, "bin", "python3"))
        self.assertIsNone(h["realpath"])
        want = "python" + ".".join(h["python"].split(".")[:2])
        self.assertIn(os.path.join(venv, "bin", want), h["aliases"])
        self.assertIn(os.path.join(venv, "bin", "python"), h["aliases"])
        self.assertTrue(all(p.startswith(venv + "/") for p in h["aliases"]), h["aliases"])

    def test_info_log_at_start(self):
        log = self.agent.take(lambda f: f.kind == LOG).json()
        self.assertEqual(log["level"], "INFO")
        self.assertIn("started", log["msg"])

    def test_pipelined_call(self):
        a = AgentProc(first_frames=encode(CALL, handle=7, payload={"op": "ping"}))
        try:
            flags, obj, frames = a.reply(7)
            self.assertEqual(obj["pong"], True)
            self.assertEqual((frames[0].dst, frames[0].src), (0, 1))
        finally:
            self.assertEqual(a.close(), 0)

    def test_ping(self):
        self.assertEqual(self.agent.ok("ping"), {"pong": True, "pid": self.hello["pid"]})

    # ---- exec --------------------------------------------------------------------

    def test_exec_argv(self):
        r = run(self.agent, argv=["echo", "hello", "world"])
        self.assertEqual((r["rc"], r["stdout"], r["timed_out"]), (0, b"hello world\n", False))

    def test_exec_shell_stdin_env_cwd(self):
        r = run(
            self.agent,
            shell="echo $SPINDLE_X; pwd; cat; echo oops >&2; exit 3",
            env={"SPINDLE_X": "yes"},
            cwd=self.tmp,
            stdin_b64=base64.b64encode(b"from stdin\n").decode(),
        )
        self.assertEqual(r["rc"], 3)
        self.assertEqual(r["stdout"], b"yes\n" + os.path.realpath(self.tmp).encode() + b"\nfrom stdin\n")
        self.assertEqual(r["stderr"], b"oops\n")

    def test_exec_inherits_environment(self):
        r = run(self.agent, shell='echo "$SPINDLE_INHERITED"', env={"OTHER": "x"})
        self.assertEqual(r["stdout"], b"agent-env\n")

    def test_exec_timeout(self):
        start = time.monotonic()
        r = run(self.agent, shell="sleep 30", timeout=0.5)
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual((r["rc"], r["timed_out"]), (-9, True))

    def test_exec_cannot_start(self):
        r = run(self.agent, argv=["/nonexistent/spindle-cmd"])
        self.assertEqual(r["rc"], 127)
        self.assertIn(b"spindle-cmd", r["stderr"])
        r = run(self.agent, argv=["true"], cwd=os.path.join(self.tmp, "missing"))
        self.assertEqual(r["rc"], 127)
        self.assertTrue(r["stderr"])
        script = os.path.join(self.tmp, "noexec.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\necho hi\n")
        os.chmod(script, 0o644)
        r = run(self.agent, argv=[script])  # no x bit: even root gets EACCES
        self.assertEqual(r["rc"], 126)

    def test_exec_out_of_range_numbers_and_nul_are_bad_requests(self):
        # Not `internal` tracebacks: every number is range-checked, every C string NUL-free.
        for timeout in (1e18, 1e300, -1, 0, True, "5", 7 * 24 * 3600 + 1):
            e = self.agent.error("exec", argv=["true"], timeout=timeout)
            self.assertEqual(e["error"], "bad_request", (timeout, e))
            self.assertIn("timeout", e["message"])
        for args in (
            dict(argv=["echo", "a\0b"]),
            dict(shell="echo \0"),
            dict(argv=["true"], env={"A": "x\0y"}),
            dict(argv=["true"], env={"A=B": "1"}),
            dict(argv=["true"], env={"": "1"}),
            dict(argv=["true"], cwd="/\0"),
            dict(argv=["true"], cwd=5),
        ):
            e = self.agent.error("exec", **args)
            self.assertEqual(e["error"], "bad_request", (args, e))
        e = self.agent.error("spawn_context", ctx=2, cmd="__SPINDLE_BOOT__", success="ok", timeout=1e18)
        self.assertEqual(e["error"], "bad_request")
        e = self.agent.error("spawn_context", ctx=2**40, cmd="__SPINDLE_BOOT__", success="ok")
        self.assertEqual(e["error"], "bad_request")
        self.assertEqual(run(self.agent, argv=["true"], timeout=7 * 24 * 3600)["rc"], 0)

    def test_exec_bad_request(self):
        self.assertEqual(self.agent.error("exec", argv="ls")["error"], "bad_request")
        self.assertEqual(self.agent.error("exec", argv=["ls"], env={"A": 1})["error"], "bad_request")

    def test_exec_large_stdout_split_reply(self):
        size = 6 * 1024 * 1024
        call_id = self.agent.call("exec", shell="head -c %d /dev/zero" % size)
        flags, obj, frames = self.agent.reply(call_id)
        self.assertGreaterEqual(len(frames), 2)
        self.assertTrue(all(f.flags & MORE for f in frames[:-1]))
        self.assertFalse(frames[-1].flags & (MORE | ERROR))
        self.assertTrue(all(f.length <= MAX_PAYLOAD for f in frames))
        self.assertEqual(base64.b64decode(obj["stdout_b64"]), b"\0" * size)
        self.assertEqual(self.agent.ok("ping")["pong"], True)

    def test_calls_answered_in_any_order(self):
        slow = self.agent.call("exec", shell="sleep 1; echo slow")
        fast = self.agent.call("ping")
        self.agent.reply(fast, timeout=0.9)
        self.assertEqual(self.agent.peek(lambda f: f.kind == REPLY and f.reply_to == slow), [])
        self.assertEqual(self.agent.reply(slow)[1]["rc"], 0)

    def test_child_cannot_touch_frame_fds(self):
        # The child's fd 1 is captured; the agent's own fd 1 now points at its stderr and
        # its fd 0 at /dev/null, so a child reaching them via /proc cannot corrupt frames.
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("no /proc")
        r = run(
            self.agent,
            shell="echo captured >&1; echo STRAY > /proc/$PPID/fd/1; cat /proc/$PPID/fd/0; echo done",
        )
        self.assertEqual(r["stdout"], b"captured\ndone\n")
        self.assertEqual(self.agent.ok("ping")["pong"], True)
        deadline = time.monotonic() + 5
        while b"STRAY" not in self.agent.stderr and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertIn(b"STRAY", self.agent.stderr)

    # ---- put_file ----------------------------------------------------------------

    def test_put_file_multi_chunk(self):
        data = os.urandom(3 * 400 * 1024 + 17)
        chunks = [data[i : i + 400 * 1024] for i in range(0, len(data), 400 * 1024)]
        dest = os.path.join(self.tmp, "dest.bin")
        with open(dest, "wb") as f:
            f.write(b"old")
        flags, obj, _ = self.put(dest, chunks, mode=0o640)
        self.assertFalse(flags & ERROR, obj)
        self.assertEqual(obj, {"path": dest, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(stat.S_IMODE(os.stat(dest).st_mode), 0o640)
        self.assertEqual(os.listdir(self.tmp), ["dest.bin"])  # no temp file left

    def test_put_file_default_mode_and_empty(self):
        dest = os.path.join(self.tmp, "empty")
        flags, obj, _ = self.put(dest, [b""], mode=None, owner=None, group=None)
        self.assertFalse(flags & ERROR, obj)
        mask = os.umask(0)
        os.umask(mask)
        self.assertEqual(stat.S_IMODE(os.stat(dest).st_mode), 0o666 & ~mask)
        self.assertEqual(os.path.getsize(dest), 0)

    def test_put_file_owner_by_name(self):
        import grp
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        dest = os.path.join(self.tmp, "owned")
        flags, obj, _ = self.put(dest, [b"x"], owner=user, group=group)
        self.assertFalse(flags & ERROR, obj)
        st = os.stat(dest)
        self.assertEqual((st.st_uid, st.st_gid), (os.getuid(), os.getgid()))
        flags, obj, _ = self.put(dest, [b"x"], owner="no-such-user-spindle")
        self.assertTrue(flags & ERROR)
        self.assertEqual(obj["error"], "bad_request")

    def test_put_file_missing_dir_errors_after_eof(self):
        a = self.agent
        dest = os.path.join(self.tmp, "no", "such", "dir", "f")
        call_id = a.call("put_file", path=dest, size=6, mode=0o600)
        a.write(encode(DATA, 0, call_id, payload=b"abc"))
        self.assertEqual(a.ok("ping")["pong"], True)  # agent alive, no early reply
        self.assertEqual(a.peek(lambda f: f.kind == REPLY and f.reply_to == call_id), [])
        a.write(encode(DATA, EOF, call_id, payload=b"def"))
        flags, obj, _ = a.reply(call_id)
        self.assertTrue(flags & ERROR)
        self.assertEqual(obj["error"], "not_found")
        self.assertIn("message", obj)
        self.assertEqual(a.ok("ping")["pong"], True)
        self.assertEqual(a.peek(lambda f: f.kind == REPLY), [])  # replied exactly once

    def test_put_file_size_mismatch(self):
        dest = os.path.join(self.tmp, "short")
        flags, obj, _ = self.put(dest, [b"abc"], size=10)
        self.assertTrue(flags & ERROR)
        self.assertEqual(obj["error"], "io")
        self.assertEqual(os.listdir(self.tmp), [])
        flags, obj, _ = self.put(dest, [b"abc", b"defgh"], size=4)
        self.assertEqual(obj["error"], "io")
        self.assertEqual(os.listdir(self.tmp), [])

    def test_put_file_abort(self):
        a = self.agent
        dest = os.path.join(self.tmp, "aborted")
        call_id = a.call("put_file", path=dest, size=100)
        a.write(encode(DATA, 0, call_id, payload=b"x" * 10))
        a.write(encode(DATA, ABORT, call_id))
        flags, obj, _ = a.reply(call_id)
        self.assertTrue(flags & ERROR)
        self.assertEqual(os.listdir(self.tmp), [])

    # ---- fetch_file --------------------------------------------------------------

    def test_fetch_file_multi_chunk(self):
        data = os.urandom(600 * 1024)
        src = os.path.join(self.tmp, "src.bin")
        with open(src, "wb") as f:
            f.write(data)
        os.chmod(src, 0o604)
        call_id = self.agent.call("fetch_file", path=src)
        flags, obj, _ = self.agent.reply(call_id)
        self.assertFalse(flags & ERROR, obj)
        size_frame = self.agent.take(lambda f: f.kind == DATA and f.flags & SIZE)
        self.assertEqual(struct.unpack(">Q", size_frame.payload), (len(data),))
        chunks = self.agent.peek(lambda f: f.kind == DATA and f.handle == call_id)
        self.assertEqual([len(c.payload) for c in chunks], [256 * 1024, 256 * 1024, 88 * 1024])
        self.assertEqual([bool(c.flags & EOF) for c in chunks], [False, False, True])
        self.assertEqual(b"".join(c.payload for c in chunks), data)
        self.assertEqual(obj, {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "mode": 0o604})

    def test_fetch_empty_file(self):
        src = os.path.join(self.tmp, "empty")
        open(src, "wb").close()
        call_id = self.agent.call("fetch_file", path=src)
        self.assertEqual(self.agent.reply(call_id)[1]["size"], 0)
        chunks = self.agent.peek(lambda f: f.kind == DATA and f.handle == call_id and not f.flags & SIZE)
        self.assertEqual([(c.payload, c.flags & EOF) for c in chunks], [(b"", EOF)])

    def test_fetch_file_errors(self):
        call_id = self.agent.call("fetch_file", path=os.path.join(self.tmp, "missing"))
        flags, obj, _ = self.agent.reply(call_id)
        self.assertTrue(flags & ERROR)
        self.assertEqual(obj["error"], "not_found")
        self.assertEqual(self.agent.peek(lambda f: f.kind == DATA), [])
        self.assertTrue(self.agent.error("fetch_file", path=self.tmp)["error"])

    def test_fetch_refuses_what_is_not_a_regular_file(self):
        # /dev/zero has no end: stock's fetch refuses it, and so does the agent, before it
        # sends any DATA (a FIFO must not hang the call either).
        fifo = os.path.join(self.tmp, "fifo")
        os.mkfifo(fifo)
        for path in ("/dev/zero", fifo):
            call_id = self.agent.call("fetch_file", path=path)
            flags, obj, _ = self.agent.reply(call_id)
            self.assertTrue(flags & ERROR, obj)
            self.assertEqual(obj["error"], "io")
            self.assertIn(path, obj["message"])
            self.assertIn("not a regular file", obj["message"])
            self.assertEqual(self.agent.peek(lambda f, c=call_id: f.kind == DATA and f.handle == c), [])

    def test_fetch_reads_a_pseudo_file_to_its_end(self):
        # /proc files report size 0: read to their end (bounded), as sftp would.
        if not os.path.exists("/proc/self/status"):
            self.skipTest("no /proc")
        call_id = self.agent.call("fetch_file", path="/proc/self/status")
        flags, obj, _ = self.agent.reply(call_id)
        self.assertFalse(flags & ERROR, obj)
        data = b"".join(
            f.payload
            for f in self.agent.peek(lambda f: f.kind == DATA and f.handle == call_id and not f.flags & SIZE)
        )
        self.assertIn(b"VmHWM", data)
        self.assertEqual(obj["size"], len(data))

    def test_cancel_stops_a_fetch_and_discards_its_reply(self):
        src = os.path.join(self.tmp, "big.bin")
        with open(src, "wb") as f:
            f.truncate(1024 * 1024 * 1024)  # sparse: 1 GiB to read, none on disk
        a = self.agent
        call_id = a.call("fetch_file", path=src)
        a.take(lambda f: f.kind == DATA and f.handle == call_id and not f.flags & SIZE)
        self.assertEqual(a.ok("cancel", handle=call_id), {"cancelled": True})
        time.sleep(0.5)
        with a.cond:  # drop what came meanwhile: the frames are counted, not kept
            a.frames = [f for f in a.frames if not (f.kind == DATA and f.handle == call_id)]
        time.sleep(0.5)
        self.assertEqual(a.peek(lambda f: f.handle == call_id or f.reply_to == call_id), [])
        self.assertEqual(a.ok("cancel", handle=call_id), {"cancelled": False})
        self.assertEqual(a.ok("ping")["pong"], True)

    def wait_for_pid(self, pidfile):
        """The pid a command under test wrote to ``pidfile`` (renamed into place)."""
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(pidfile):
            self.assertLess(time.monotonic(), deadline, "child did not start")
            time.sleep(0.02)
        with open(pidfile) as f:
            return int(f.read())

    def wait_gone(self, pid):
        deadline = time.monotonic() + 5
        while not pid_gone(pid):
            self.assertLess(time.monotonic(), deadline, "the cancelled command survived")
            time.sleep(0.02)

    def test_cancel_kills_an_exec_and_its_process_group(self):
        pidfile = os.path.join(self.tmp, "pid")
        call_id = self.agent.call(
            "exec", shell="sleep 1000 & echo $! > %s.tmp; mv %s.tmp %s; wait" % (pidfile, pidfile, pidfile)
        )
        pid = self.wait_for_pid(pidfile)
        self.assertFalse(pid_gone(pid))
        self.assertEqual(self.agent.ok("cancel", handle=call_id), {"cancelled": True})
        self.wait_gone(pid)
        time.sleep(0.3)
        self.assertEqual(self.agent.peek(lambda f: f.reply_to == call_id), [])
        self.assertEqual(self.agent.error("cancel", handle="x")["error"], "bad_request")

    def test_cancel_kills_a_command_on_a_terminal(self):
        pidfile = os.path.join(self.tmp, "pid")
        call_id = self.agent.call(
            "exec",
            tty=True,
            shell="echo $$ > %s.tmp; mv %s.tmp %s; exec sleep 1000" % (pidfile, pidfile, pidfile),
        )
        pid = self.wait_for_pid(pidfile)
        self.assertEqual(self.agent.ok("cancel", handle=call_id), {"cancelled": True})
        self.wait_gone(pid)
        time.sleep(0.3)
        self.assertEqual(self.agent.peek(lambda f: f.reply_to == call_id), [])

    def test_tty_output_is_capped_too(self):
        r = run(self.agent, tty=True, shell="head -c 100000000 /dev/zero; echo finished")
        self.assertTrue(r["output_truncated"])
        self.assertTrue(r["stdout"].startswith(b"\0" * OUTPUT_MAX))
        self.assertIn(b"output truncated at 44 MiB", r["stdout"][OUTPUT_MAX:])
        self.assertNotIn(b"finished", r["stdout"][OUTPUT_MAX:])

    def test_exec_output_is_capped_and_the_command_killed(self):
        # 1 GiB of output: the agent keeps OUTPUT_MAX bytes, kills the command and says so
        # (before the cap, it held it all: ~4.8 GB peak for 1 GiB).
        start = time.monotonic()
        r = run(self.agent, shell="yes | head -c 1073741824; echo done >&2")
        self.assertLess(time.monotonic() - start, 60)
        self.assertTrue(r["output_truncated"])
        self.assertEqual(r["rc"], -9)
        self.assertEqual(len(r["stdout"]), OUTPUT_MAX)
        self.assertIn(b"output truncated at 44 MiB", r["stderr"])
        self.assertNotIn(b"done", r["stderr"])
        with open("/proc/%d/status" % self.hello["pid"]) as f:
            hwm = [int(line.split()[1]) for line in f if line.startswith("VmHWM:")][0]
        self.assertLess(hwm, 512 * 1024, "agent peak RSS %d KiB" % hwm)
        self.assertNotIn("output_truncated", run(self.agent, argv=["echo", "small"]))

    # ---- control and robustness --------------------------------------------------

    def test_unknown_op_and_bad_payload(self):
        self.assertEqual(self.agent.error("frobnicate")["error"], "bad_request")
        self.agent.write(encode(CALL, handle=99, payload=b"{not json"))
        flags, obj, _ = self.agent.reply(99)
        self.assertTrue(flags & ERROR)
        self.assertEqual(obj["error"], "bad_request")
        self.assertEqual(self.agent.ok("ping")["pong"], True)

    def test_log_level_debug(self):
        self.assertEqual(self.agent.ok("log_level", level="DEBUG"), {})
        self.agent.ok("ping")
        log = self.agent.take(lambda f: f.kind == LOG and f.json()["level"] == "DEBUG").json()
        self.assertIn("ping", log["msg"])
        self.assertEqual(self.agent.error("log_level", level="LOUD")["error"], "bad_request")

    def test_shutdown(self):
        self.assertEqual(self.agent.ok("shutdown"), {})
        self.assertEqual(self.agent.proc.wait(timeout=TIMEOUT), 0)

    def _assert_bad_frame_exits(self, frame):
        self.agent.write(frame)
        rc = self.agent.proc.wait(timeout=TIMEOUT)
        self.assertNotEqual(rc, 0)
        deadline = time.monotonic() + 5
        while b"frame error" not in self.agent.stderr and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertIn(b"frame error", self.agent.stderr)

    def test_bad_magic_exits(self):
        self._assert_bad_frame_exits(encode(CALL, handle=1, payload=b"{}", magic=b"XX"))

    def test_unknown_kind_exits(self):
        self._assert_bad_frame_exits(encode(42, handle=1))

    def test_oversized_frame_exits(self):
        self._assert_bad_frame_exits(HEADER.pack(b"SP", CALL, 0, MAX_PAYLOAD + 1, 1, 0, 1, 0))

    def test_stdin_close_kills_children(self):
        pidfile = os.path.join(self.tmp, "pid")
        call_id = self.agent.call(
            "exec", shell="echo $$ > %s.tmp; mv %s.tmp %s; exec sleep 100" % (pidfile, pidfile, pidfile)
        )
        pid = self.wait_for_pid(pidfile)
        self.assertFalse(pid_gone(pid))
        self.assertEqual(self.agent.close(), 0)
        deadline = time.monotonic() + 5
        while not pid_gone(pid):
            self.assertLess(time.monotonic(), deadline, "sleep child survived the agent")
            time.sleep(0.02)
        self.assertEqual(self.agent.peek(lambda f: f.reply_to == call_id), [])


if __name__ == "__main__":
    unittest.main()
