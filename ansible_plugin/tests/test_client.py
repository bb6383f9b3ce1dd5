"""Unit tests of spindle_ansible.client's framing and dispatch against a fake daemon.

The fake daemon is a Python thread serving the docs/api.md framing on a Unix socket in
a temporary directory (under $SPINDLE_TEST_TMP if set).  The real daemon is tested end
to end by the Rust side.

Run: cd /work/main && python3 -m unittest discover -s ansible_plugin/tests -v
"""

import base64
import json
import os
import queue
import random
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest
import warnings
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from spindle_ansible import client as client_mod  # noqa: E402
from spindle_ansible import Client, ExecResult, SpindleError, TargetSpec  # noqa: E402

WAIT = 10.0  # generous upper bound for anything a test waits on

SSH = TargetSpec(host="web1", user="deploy", name="web1")


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(sock):
    header = recv_exact(sock, 4)
    if header is None:
        return None, None
    (n,) = struct.unpack(">I", header)
    body = recv_exact(sock, n)
    return n, body


def write_frame(sock, obj):
    body = json.dumps(obj).encode("utf-8") if not isinstance(obj, bytes) else obj
    sock.sendall(struct.pack(">I", len(body)) + body)


class FakeDaemon:
    """Accepts connections; each request goes to ``handler(conn, msg)``.

    The default handler answers immediately with ``{"echo": msg}``.  Every raw frame
    received is recorded in ``frames`` as ``(declared_length, body_bytes)``.
    """

    def __init__(self, tmpdir, handler=None):
        self.path = os.path.join(tmpdir, "spindle.sock")
        self.handler = handler or self.echo
        self.frames = []
        self.conns = []
        self.accepted = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(16)
        self.stopping = False
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    @staticmethod
    def echo(conn, msg):
        conn.reply(msg["id"], {"echo": msg})

    def _accept_loop(self):
        while not self.stopping:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            conn = FakeConn(self, sock)
            with self.lock:
                self.conns.append(conn)
            self.accepted.release()
            threading.Thread(target=conn.serve, daemon=True).start()

    def stop(self):
        self.stopping = True
        # shutdown() wakes the thread blocked in accept(); close() alone would not.
        for step in (lambda: self.listener.shutdown(socket.SHUT_RDWR), self.listener.close):
            try:
                step()
            except OSError:
                pass
        self.thread.join(WAIT)
        with self.lock:
            conns = list(self.conns)
        for conn in conns:
            conn.close()


class FakeConn:
    def __init__(self, daemon, sock):
        self.daemon = daemon
        self.sock = sock
        self.send_lock = threading.Lock()

    def serve(self):
        while True:
            try:
                n, body = read_frame(self.sock)
            except OSError:
                return
            if body is None:
                return
            with self.daemon.lock:
                self.daemon.frames.append((n, body))
            self.daemon.handler(self, json.loads(body))

    def send(self, obj):
        with self.send_lock:
            write_frame(self.sock, obj)

    def send_raw(self, data):
        with self.send_lock:
            self.sock.sendall(data)

    def reply(self, rid, result):
        self.send({"id": rid, "ok": True, "result": result})

    def error(self, rid, kind, message, host=None):
        err = {"kind": kind, "message": message}
        if host is not None:
            err["host"] = host
        self.send({"id": rid, "ok": False, "error": err})

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class ClientTestCase(unittest.TestCase):
    handler = None

    def setUp(self):
        base = os.environ.get("SPINDLE_TEST_TMP") or None
        if base:
            os.makedirs(base, exist_ok=True)
        self.tmpdir = tempfile.mkdtemp(prefix="spc-", dir=base)
        self.daemon = FakeDaemon(self.tmpdir, self.handler)
        self.client = Client(self.daemon.path, timeout=WAIT)

    def tearDown(self):
        self.client.close()
        self.daemon.stop()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def run_threads(self, fn, n):
        """Run fn(i) in n threads; return results (or exceptions) by index."""
        results = [None] * n

        def run(i):
            try:
                results[i] = fn(i)
            except BaseException as e:  # noqa: B902 - reported to the test
                results[i] = e

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
            self.assertFalse(t.is_alive(), "a client call hung")
        return results


class TestFraming(ClientTestCase):
    def test_request_framing_and_result(self):
        result = self.client.request("ping", SSH, extra="x", skipped=None)
        n, body = self.daemon.frames[0]
        self.assertEqual(n, len(body))
        msg = json.loads(body)
        self.assertEqual(result, {"echo": msg})
        self.assertEqual(msg["op"], "ping")
        self.assertIsInstance(msg["id"], int)
        self.assertNotEqual(msg["id"], 0)
        self.assertEqual(msg["target"], {"host": "web1", "user": "deploy", "name": "web1"})
        self.assertEqual(msg["extra"], "x")
        self.assertNotIn("skipped", msg)

    def test_lazy_connect_and_unique_ids(self):
        self.assertEqual(self.daemon.conns, [])
        for _ in range(3):
            self.client.stats()
        self.assertEqual(len(self.daemon.conns), 1)
        msgs = [json.loads(b) for _, b in self.daemon.frames]
        self.assertEqual(len({m["id"] for m in msgs}), 3)
        for m in msgs:
            self.assertEqual(m["op"], "stats")
            self.assertNotIn("target", m)

    def test_one_caller_reads_for_itself(self):
        # Ansible's worker makes one call at a time: no reader thread is started for it.
        for _ in range(3):
            self.client.stats()
        self.assertFalse(self.client._conn.reader_started)
        self.assertFalse(self.client._conn.reader.is_alive())
        self.assertFalse(self.client._conn.reading)

    def test_unicode_and_large_message(self):
        big = "é" * (3 * 1024 * 1024)  # multi-byte UTF-8, several MiB: many recv/send chunks
        result = self.client.request("ping", {"transport": "local"}, blob=big)
        self.assertEqual(result["echo"]["blob"], big)
        n, body = self.daemon.frames[0]
        self.assertEqual(n, len(body))

    def test_request_rejects_id_field(self):
        with self.assertRaises(ValueError):
            self.client.request("ping", SSH, id=5)

    def test_oversize_request_refused_locally(self):
        with mock.patch.object(client_mod, "MAX_MESSAGE", 100):
            with self.assertRaises(SpindleError) as cm:
                self.client.request("ping", SSH, blob="x" * 200)
        self.assertEqual(cm.exception.kind, "bad_request")
        self.assertEqual(self.daemon.frames, [])


class TestConvenience(ClientTestCase):
    @staticmethod
    def handler(conn, msg):
        op = msg["op"]
        if op == "exec":
            stdin = base64.b64decode(msg.get("stdin_b64", ""))
            conn.reply(
                msg["id"],
                {
                    "rc": 3,
                    "stdout_b64": base64.b64encode(b"out:" + stdin).decode(),
                    "stderr_b64": base64.b64encode(b"\xff\x00err").decode(),
                    "timed_out": False,
                    "request": msg,
                },
            )
        else:
            conn.reply(msg["id"], {"request": msg})

    def last_request(self):
        return json.loads(self.daemon.frames[-1][1])

    def test_exec_encodes_and_decodes(self):
        r = self.client.exec(SSH, argv=["cat"], stdin=b"\x00\x01data", env={"A": "1"}, cwd="/srv", timeout=5)
        self.assertIsInstance(r, ExecResult)
        self.assertEqual(r.rc, 3)
        self.assertEqual(r.stdout, b"out:\x00\x01data")
        self.assertEqual(r.stderr, b"\xff\x00err")
        self.assertFalse(r.timed_out)
        self.assertFalse(r.ok)
        req = self.last_request()
        self.assertEqual(req["argv"], ["cat"])
        self.assertNotIn("shell", req)
        self.assertEqual(req["env"], {"A": "1"})
        self.assertEqual(req["cwd"], "/srv")
        self.assertEqual(req["timeout"], 5)

    def test_exec_shell_without_optionals(self):
        self.client.exec({"transport": "local", "python": None}, shell="echo hi")
        req = self.last_request()
        self.assertEqual(req["shell"], "echo hi")
        self.assertEqual(req["target"], {"transport": "local"})
        for key in ("argv", "stdin_b64", "env", "cwd", "timeout"):
            self.assertNotIn(key, req)

    def test_exec_argument_checks(self):
        with self.assertRaises(ValueError):
            self.client.exec(SSH)
        with self.assertRaises(ValueError):
            self.client.exec(SSH, argv=["a"], shell="b")
        with self.assertRaises(TypeError):
            self.client.exec(SSH, argv="ls -l")
        self.assertEqual(self.daemon.frames, [])

    def test_put_fetch_paths_and_mode(self):
        self.client.put(SSH, "rel/file", "/etc/motd", mode="0640", owner="root")
        req = self.last_request()
        self.assertEqual(req["op"], "put")
        self.assertEqual(req["src"], os.path.abspath("rel/file"))
        self.assertEqual(req["dest"], "/etc/motd")
        self.assertEqual(req["mode"], 0o640)
        self.assertEqual(req["owner"], "root")
        self.assertNotIn("group", req)

        self.client.fetch(SSH, "/etc/hosts", "out/hosts")
        req = self.last_request()
        self.assertEqual(req["op"], "fetch")
        self.assertEqual(req["src"], "/etc/hosts")
        self.assertEqual(req["dest"], os.path.abspath("out/hosts"))

        with self.assertRaises(ValueError):
            self.client.put(SSH, "a", "b", mode="rwx")

    def test_other_ops(self):
        self.client.ping(SSH)
        self.assertEqual(self.last_request()["op"], "ping")
        self.client.close_target(SSH)
        req = self.last_request()
        self.assertEqual((req["op"], req["target"]["host"]), ("close", "web1"))
        self.client.stats()
        self.assertNotIn("target", self.last_request())
        self.client.shutdown()
        req = self.last_request()
        self.assertEqual(req["op"], "shutdown")
        self.assertNotIn("target", req)


class TestConcurrency(ClientTestCase):
    N = 12

    def setUp(self):
        self.held = queue.Queue()
        self.handler = lambda conn, msg: self.held.put((conn, msg))
        super().setUp()

    def test_out_of_order_replies_reach_their_callers(self):
        def call(i):
            return self.client.request("exec", TargetSpec(host="h%d" % i), shell="echo %d" % i)

        def answer_shuffled():
            got = [self.held.get(timeout=WAIT) for _ in range(self.N)]
            random.Random(7).shuffle(got)
            got.reverse()
            for conn, msg in got:
                conn.reply(msg["id"], {"shell": msg["shell"], "host": msg["target"]["host"]})
                time.sleep(0.002)

        answerer = threading.Thread(target=answer_shuffled)
        answerer.start()
        results = self.run_threads(call, self.N)
        answerer.join(WAIT)
        for i, r in enumerate(results):
            self.assertEqual(r, {"shell": "echo %d" % i, "host": "h%d" % i})
        self.assertEqual(len(self.daemon.conns), 1, "all threads share one connection")

    def pings_answered(self, order):
        """N pings at once from N threads, answered once every one has arrived, in the order
        ``order`` gives the list of (conn, msg) received; their results."""

        def answer_all():
            got = [self.held.get(timeout=WAIT) for _ in range(self.N)]
            for conn, msg in order(got):
                conn.reply(msg["id"], {"n": msg["n"]})

        answerer = threading.Thread(target=answer_all)
        answerer.start()
        results = self.run_threads(lambda i: self.client.request("ping", SSH, n=i), self.N)
        answerer.join(WAIT)
        return results

    def ping_answered(self, result):
        """One ping, answered with ``result`` when it arrives; what the call returned."""

        def answer_one():
            conn, msg = self.held.get(timeout=WAIT)
            conn.reply(msg["id"], result)

        t = threading.Thread(target=answer_one)
        t.start()
        try:
            return self.client.request("ping", SSH)
        finally:
            t.join(WAIT)

    def test_all_requests_in_flight_at_once(self):
        # No reply is sent until every request has arrived: proves the client does not
        # serialize calls (a lock held across the round trip would deadlock here).
        self.assertEqual(self.pings_answered(list), [{"n": i} for i in range(self.N)])

    def test_waiting_callers_are_handed_to_the_reader_thread(self):
        # The first caller reads for itself; the replies come in reverse, so it gets its own
        # last and dispatches the others'; a caller that registers while it reads waits on
        # its event and is never left without a reader.
        self.assertEqual(self.pings_answered(lambda got: got[::-1]), [{"n": i} for i in range(self.N)])
        self.assertFalse(self.client._conn.reading)
        # afterwards a single call still gets its reply, whoever reads now
        self.assertEqual(self.ping_answered({"after": True}), {"after": True})

    def test_call_timeout_and_late_reply_dropped(self):
        with self.assertRaises(SpindleError) as cm:
            self.client.request("ping", SSH, call_timeout=0.2)
        self.assertEqual(cm.exception.kind, "timeout")
        self.assertEqual(cm.exception.host, "web1")
        conn, late = self.held.get(timeout=WAIT)
        conn.reply(late["id"], {"late": True})
        self.assertEqual(self.ping_answered({"fresh": True}), {"fresh": True})


class TestErrors(ClientTestCase):
    @staticmethod
    def handler(conn, msg):
        if msg.get("kind") == "no_host":
            conn.error(msg["id"], "bad_request", "unknown op")
        else:
            conn.error(msg["id"], msg.get("kind", "unreachable"), "connection refused", "web1")

    def test_error_reply_raises_kind_host_message(self):
        with self.assertRaises(SpindleError) as cm:
            self.client.ping(TargetSpec(host="10.0.0.1", name="web1"))
        e = cm.exception
        self.assertEqual((e.kind, e.host, e.message), ("unreachable", "web1", "connection refused"))
        self.assertIn("web1", str(e))
        self.assertIn("unreachable", str(e))

    def test_each_kind(self):
        for kind in ("auth_failed", "host_key_mismatch", "no_python", "busy", "remote"):
            with self.assertRaises(SpindleError) as cm:
                self.client.request("exec", SSH, kind=kind, shell="true")
            self.assertEqual(cm.exception.kind, kind)

    def test_error_without_host_uses_target_label(self):
        with self.assertRaises(SpindleError) as cm:
            self.client.request("bogus", TargetSpec(host="10.0.0.9", name="db"), kind="no_host")
        self.assertEqual((cm.exception.kind, cm.exception.host), ("bad_request", "db"))

    def test_errors_are_picklable(self):
        import pickle

        e = pickle.loads(pickle.dumps(SpindleError("timeout", "slow", "h")))
        self.assertEqual((e.kind, e.message, e.host), ("timeout", "slow", "h"))

    def test_connection_survives_errors(self):
        for _ in range(3):
            with self.assertRaises(SpindleError):
                self.client.ping(SSH)
        self.assertEqual(len(self.daemon.conns), 1)


class TestConnectionLoss(ClientTestCase):
    N = 5

    def setUp(self):
        self.held = queue.Queue()
        self.mode = "hold"

        def handler(conn, msg):
            if self.mode == "hold":
                self.held.put((conn, msg))
            else:
                conn.reply(msg["id"], {"ok": "again"})

        self.handler = handler
        super().setUp()

    def hold_n_then(self, action):
        def act():
            got = [self.held.get(timeout=WAIT) for _ in range(self.N)]
            action(got[0][0])

        t = threading.Thread(target=act)
        t.start()
        results = self.run_threads(lambda i: self.client.request("ping", SSH, n=i), self.N)
        t.join(WAIT)
        for r in results:
            self.assertIsInstance(r, SpindleError, r)
            self.assertEqual(r.kind, "daemon_lost")
        return results

    def test_disconnect_wakes_all_waiters_then_reconnects(self):
        self.hold_n_then(lambda conn: conn.close())
        self.mode = "answer"
        self.assertEqual(self.client.ping(SSH), {"ok": "again"})
        self.assertEqual(len(self.daemon.conns), 2)

    def test_oversize_length_rejected(self):
        results = self.hold_n_then(lambda conn: conn.send_raw(struct.pack(">I", client_mod.MAX_MESSAGE + 1)))
        self.assertIn("oversize", results[0].message)

    def test_truncated_message(self):
        def act(conn):
            conn.send_raw(struct.pack(">I", 100) + b'{"id": 1')
            conn.close()

        self.hold_n_then(act)

    def test_non_object_body(self):
        results = self.hold_n_then(lambda conn: conn.send([1, 2, 3]))
        self.assertIn("not a JSON object", results[0].message)

    def test_malformed_json(self):
        self.hold_n_then(lambda conn: conn.send(b"{nope"))

    def test_id_zero_error_then_close(self):
        def act(conn):
            conn.send(
                {"id": 0, "ok": False, "error": {"kind": "bad_request", "message": "body is not an object"}}
            )
            conn.close()

        results = self.hold_n_then(act)
        self.assertIn("body is not an object", results[0].message)

    def test_client_close_wakes_waiters(self):
        self.hold_n_then(lambda conn: self.client.close())

    def test_call_after_loss_fails_fast_when_daemon_gone(self):
        self.hold_n_then(lambda conn: self.daemon.stop())
        with self.assertRaises(SpindleError) as cm:
            self.client.ping(SSH)
        self.assertEqual(cm.exception.kind, "daemon_unavailable")


class TestNoDaemon(unittest.TestCase):
    def test_daemon_unavailable(self):
        tmp = tempfile.mkdtemp(prefix="spc-", dir=os.environ.get("SPINDLE_TEST_TMP") or None)
        try:
            c = Client(os.path.join(tmp, "missing.sock"), timeout=1)
            with self.assertRaises(SpindleError) as cm:
                c.stats()
            self.assertEqual(cm.exception.kind, "daemon_unavailable")
            c.close()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class TestTargetSpec(unittest.TestCase):
    def test_to_dict_omits_none(self):
        spec = TargetSpec(host="h", port=2222, ssh_args="-o ControlMaster=no", connect_timeout=5)
        self.assertEqual(
            spec.to_dict(),
            {"host": "h", "port": 2222, "ssh_args": "-o ControlMaster=no", "connect_timeout": 5},
        )
        self.assertEqual(TargetSpec.local().to_dict(), {"transport": "local"})
        self.assertEqual(TargetSpec.from_dict(spec.to_dict()), spec)

    def test_password_hidden_from_repr(self):
        spec = TargetSpec(host="h", password="s3cret")
        self.assertNotIn("s3cret", repr(spec))
        self.assertEqual(spec.to_dict()["password"], "s3cret")

    def test_validation(self):
        with self.assertRaises(ValueError):
            TargetSpec()
        with self.assertRaises(ValueError):
            TargetSpec(host="h", transport="telnet")
        with self.assertRaises(TypeError):
            TargetSpec.from_dict({"host": "h", "bogus": 1})
        self.assertEqual(TargetSpec(host="h", name="n").label, "n")
        self.assertEqual(TargetSpec(host="h").label, "h")


@unittest.skipUnless(hasattr(os, "fork"), "needs fork")
class TestFork(ClientTestCase):
    def test_child_gets_its_own_connection(self):
        self.assertIn("echo", self.client.ping(SSH))  # parent connected
        with warnings.catch_warnings():  # 3.12+: "multi-threaded, use of fork()": intended here
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # child: must reconnect, must not disturb the parent's connection
            code = 1
            try:
                if self.client.request("ping", SSH, who="child")["echo"]["who"] == "child":
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.WEXITSTATUS(status), 0)
        self.assertEqual(self.client.request("ping", SSH, who="parent")["echo"]["who"], "parent")
        self.assertEqual(len(self.daemon.conns), 2)


if __name__ == "__main__":
    unittest.main()


class TestLiveness(ClientTestCase):
    """A call waiting long for its reply asks the daemon whether it is alive (op ``alive``)
    and gives a daemon that does not answer up, instead of waiting for ever."""

    answer_alive = True

    def setUp(self):
        self.probes = []
        self.held = queue.Queue()
        self.handler = self._handle
        super().setUp()
        self.client = Client(self.daemon.path, timeout=None, liveness=(0.2, 0.5))

    def _handle(self, conn, msg):
        if msg["op"] == "alive":
            self.probes.append(time.monotonic())
            if self.answer_alive:
                conn.reply(msg["id"], {"pid": 1})
        else:
            self.held.put((conn, msg))

    def test_a_slow_reply_from_a_live_daemon_is_waited_for(self):
        def answer_late():
            conn, msg = self.held.get(timeout=WAIT)
            time.sleep(1.2)
            conn.reply(msg["id"], {"late": True})

        t = threading.Thread(target=answer_late)
        t.start()
        self.assertEqual(self.client.request("ping", SSH), {"late": True})
        t.join(WAIT)
        self.assertGreaterEqual(len(self.probes), 3, "asked whether it is alive every 0.2 s")

    def test_a_daemon_that_stops_answering_is_given_up(self):
        self.answer_alive = False
        start = time.monotonic()
        with self.assertRaises(SpindleError) as cm:
            self.client.request("ping", SSH)
        took = time.monotonic() - start
        self.assertEqual(cm.exception.kind, "daemon_lost")
        self.assertIn("did not answer a liveness check within 0.5s", cm.exception.message)
        self.assertLess(took, 5.0)
        self.assertEqual(len(self.probes), 1)


def _spindle_bin():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.environ.get("SPINDLE_BIN") or os.path.join(repo, "target", "release", "spindle")
    return path if os.access(path, os.X_OK) else None


class TestLivenessRealDaemon(unittest.TestCase):
    """The real daemon, stopped (SIGSTOP) while a command runs on a local target: the call
    ends with daemon_lost within the liveness window instead of hanging."""

    def test_stopped_daemon(self):
        import signal
        import subprocess

        binary = _spindle_bin()
        if binary is None:
            self.skipTest("no spindle binary (cargo build --release)")
        tmp = tempfile.mkdtemp(prefix="spl-", dir=os.environ.get("SPINDLE_TEST_TMP") or None)
        sock = os.path.join(tmp, "s.sock")
        log = open(os.path.join(tmp, "daemon.log"), "wb")
        proc = subprocess.Popen([binary, "serve", "--socket", sock], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + WAIT
            while not os.path.exists(sock) and time.monotonic() < deadline:
                time.sleep(0.05)
            client = Client(sock, timeout=None, liveness=(0.5, 1.0))
            local = TargetSpec(transport="local", name="here")
            # a command longer than the liveness window: the daemon answers each check
            self.assertEqual(client.exec(local, argv=["sleep", "2"]).rc, 0)
            threading.Timer(0.5, proc.send_signal, (signal.SIGSTOP,)).start()
            start = time.monotonic()
            with self.assertRaises(SpindleError) as cm:
                client.exec(local, argv=["sleep", "30"])
            self.assertEqual(cm.exception.kind, "daemon_lost")
            self.assertIn("liveness check", cm.exception.message)
            self.assertLess(time.monotonic() - start, 10.0)
            client.close()
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
            log.close()
            shutil.rmtree(tmp, ignore_errors=True)
