"""Client for the spindle daemon's Unix-socket API (see docs/api.md, version 1).

The daemon (``spindle serve --socket PATH``) keeps one persistent agent stream per
target; this module is how Python code (the Ansible plugins) talks to it.

Wire format, both ways: a 4-byte big-endian length, then that many bytes of one JSON
object; at most 64 MiB per message.  Requests carry an ``id`` chosen here; replies come
back in completion order and are matched to their callers by that ``id``.

Design:

* ``Client`` connects lazily, on the first request, and reconnects on the next request
  after its connection was lost or closed.
* It is thread-safe.  Any number of threads may have requests in flight at once on the
  one connection: each caller registers a slot (an ``Event`` plus the reply) under its
  id, sends its request, and waits; one background reader thread per connection reads
  replies and wakes the matching slot.  Sends are serialized by a lock of their own, so
  a large request never blocks the reader.
* The reader thread starts only when it is needed.  A caller that finds no one reading
  reads the socket itself (dispatching every reply, its own and others') until its reply
  comes; the thread starts when it stops while other calls wait, or when its reply takes
  longer than ``liveness[0]``.  Ansible's worker makes one call per task: no thread, no
  hand-over between threads (~0.5 ms of the worker's CPU per task, measured).
* When the connection is lost (daemon gone, malformed or oversize reply, ``close()``),
  every waiting call raises ``SpindleError("daemon_lost", ...)``.
* After ``os.fork()`` the child drops the inherited connection (without disturbing the
  parent's) and opens its own on first use: Ansible forks its workers.

Errors are ``SpindleError`` with attributes ``kind``, ``message`` and ``host``.  Kinds
are those of docs/api.md plus three raised by the client itself:

* ``daemon_unavailable``: the socket cannot be connected (no daemon running);
* ``daemon_lost``: the connection broke while the call was pending;
* ``timeout``: no reply within the call's wait timeout (the daemon's own deadline
  errors use the same kind).

A call may wait for its reply as long as its command runs (a module has no deadline unless
the task sets one), but never on a daemon that stopped answering: after ``liveness[0]``
seconds without the reply (30 by default) the caller asks the daemon on the same
connection whether it is alive (op ``alive``), and again every ``liveness[0]`` seconds; a
daemon that does not answer within ``liveness[1]`` seconds (60) is given up
(``daemon_lost``, every pending call wakes): a stopped, wedged or swapped-out daemon fails
the task in about a minute and a half instead of hanging the play.

Standard library only; Python 3.8+.
"""

import base64
import itertools
import json
import os
import select
import socket
import struct
import threading
import time
import weakref
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

__all__ = [
    "MAX_MESSAGE",
    "Client",
    "ExecResult",
    "SpindleError",
    "TargetSpec",
]

#: Largest message (JSON body, excluding the 4-byte length) accepted either way.
MAX_MESSAGE = 64 * 1024 * 1024

_HEADER = struct.Struct(">I")

# Extra seconds a client-side wait allows beyond an exec's own ``timeout`` (the stream
# may still have to be opened: ssh connect plus agent bootstrap).
_EXEC_GRACE = 60.0

_CONNECT_TIMEOUT = 30.0

#: (seconds without a reply before the daemon is asked whether it is alive, and again after
#: each answer; seconds the daemon has to answer): the module docstring, liveness.
LIVENESS = (30.0, 60.0)


class _Default:
    def __repr__(self) -> str:
        return "<default>"


_DEFAULT: Any = _Default()

PathLike = Union[str, "os.PathLike[str]"]


class SpindleError(Exception):
    """A failed request: ``kind`` (see docs/api.md), ``message``, ``host`` (or None)."""

    def __init__(
        self,
        kind: str,
        message: str = "",
        host: Optional[str] = None,
        details: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__(kind, message, host)
        self.kind = kind
        self.message = message
        self.host = host
        # Extra fields of the daemon's error object (e.g. ``missing`` for missing_blobs).
        self.details = dict(details or {})

    def __str__(self) -> str:
        text = self.kind
        if self.message:
            text = "%s: %s" % (text, self.message)
        if self.host:
            text = "%s: %s" % (self.host, text)
        return text

    def __repr__(self) -> str:
        return "SpindleError(%r, %r, %r)" % (self.kind, self.message, self.host)


#: The daemon's transports (docs/api.md); None means its default, ssh.
TRANSPORTS = (
    None,
    "ssh",
    "local",
    "docker",
    "podman",
    "buildah",
    "lxc",
    "lxd",
    "incus",
    "kubectl",
    "chroot",
    "setns",
    "jail",
    "machinectl",
)


@dataclass
class TargetSpec:
    """A connection spec (docs/api.md, "Connection spec").

    Every field is optional here; ``None`` means "daemon default" and is left out of
    ``to_dict()``.  ``host`` is required unless ``transport == "local"``.
    """

    host: Optional[str] = None
    transport: Optional[str] = None  # "ssh" (daemon default), "local", "docker", "podman"
    port: Optional[int] = None
    user: Optional[str] = None
    identity_file: Optional[str] = None
    ssh_executable: Optional[str] = None
    ssh_args: Optional[str] = None
    ssh_common_args: Optional[str] = None
    ssh_extra_args: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    python: Optional[str] = None
    #: The interpreter this call's module must run under (docs/api.md: interpreter contexts).
    interpreter: Optional[str] = None
    connect_timeout: Optional[int] = None
    executable: Optional[str] = None  # docker/podman: the engine's client binary
    extra_args: Optional[str] = None  # docker/podman: arguments before "exec"
    container: Optional[str] = None  # kubectl: the pod's container (-c)
    su: Optional[str] = None  # lxd/incus: program switching to a non-root user (/bin/su)
    env: Optional[Dict[str, str]] = None  # environment of the local transport command
    name: Optional[str] = None
    #: A become context (docs/api.md): method, user, flags, password, cmd, success, prompt.
    become: Optional[Dict[str, Any]] = field(default=None, repr=False)
    #: Connection delegation (docs/api.md): the spec (as a dict) of the hop this target is
    #: reached through; it may have its own ``via``.
    via: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(
                "transport must be one of %s, not %r"
                % (", ".join(t for t in TRANSPORTS if t), self.transport)
            )
        if self.transport != "local" and not self.host:
            raise ValueError("an %s target needs a host" % (self.transport or "ssh"))

    @classmethod
    def local(cls, name: Optional[str] = None, python: Optional[str] = None) -> "TargetSpec":
        """A target on the controller itself, reached through a local pipe."""
        return cls(transport="local", name=name, python=python)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> "TargetSpec":
        """Build from a mapping; unknown keys raise ``TypeError``."""
        return cls(**dict(spec))

    def to_dict(self) -> Dict[str, Any]:
        """The spec as sent to the daemon, without the ``None`` fields."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value
        return out

    @property
    def label(self) -> Optional[str]:
        """The name the daemon uses in errors: ``name``, else ``host``."""
        return self.name or self.host


@dataclass
class ExecResult:
    """The outcome of ``Client.exec``; ``stdout``/``stderr`` are decoded bytes."""

    rc: int
    stdout: bytes
    stderr: bytes
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out


class _Slot:
    __slots__ = ("event", "reply", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: Optional[Dict[str, Any]] = None
        self.error: Optional[str] = None  # daemon_lost message


class _Truncated(Exception):
    pass


class _Connection:
    """One socket to the daemon, its reader thread and its pending calls."""

    def __init__(self, sock: socket.socket, path: str):
        self.sock = sock
        self.path = path
        self.lock = threading.Lock()  # pending, dead
        self.send_lock = threading.Lock()  # whole messages on the wire; socket close
        self.pending: Dict[int, _Slot] = {}
        self.dead: Optional[str] = None  # why the connection is unusable
        self.fatal: Optional[str] = None  # an id-0 error reply from the daemon
        self.closed = False
        self.reading = False  # a caller reads the socket in its own thread (read_for)
        self.reader_started = False
        self.reader = threading.Thread(target=self._read_loop, name="spindle-client-reader", daemon=True)

    # -- callers -------------------------------------------------------------------

    def register(self, rid: int) -> _Slot:
        slot = _Slot()
        with self.lock:
            if self.dead is not None:
                raise SpindleError("daemon_lost", self.dead)
            self.pending[rid] = slot
        return slot

    def discard(self, rid: int) -> None:
        with self.lock:
            self.pending.pop(rid, None)

    def lead(self) -> bool:
        """Whether the calling thread may read the socket itself: no one else reads it."""
        with self.lock:
            if self.reading or self.reader_started or self.dead is not None:
                return False
            self.reading = True
            return True

    def unlead(self, thread: bool) -> None:
        """The calling thread stops reading. The reader thread starts if ``thread`` or if
        other calls are waiting (registered while it read, they wait on their events); the
        check is under the lock they register with, so none is left without a reader."""
        with self.lock:
            self.reading = False
            start = (thread or bool(self.pending)) and not self.reader_started and self.dead is None
            if start:
                self.reader_started = True
        if start:
            self.reader.start()

    def read_for(self, slot: "_Slot", step: float) -> bool:
        """As the leader (``lead``): read in this thread until ``slot`` is answered or ``step``
        seconds pass; whether it was answered. Past ``step`` the reader thread takes over and
        the caller goes on waiting on its event."""
        end = time.monotonic() + step
        try:
            while not slot.event.is_set():
                left = end - time.monotonic()
                if left <= 0:
                    break
                try:
                    ready, _w, _x = select.select([self.sock], [], [], left)
                except (OSError, ValueError) as e:  # closed under us
                    self.lost("lost the spindle daemon: %s" % (e,))
                    break
                if ready:
                    reason = self.read_one()
                    if reason is not None:
                        self.lost(reason)
                        break
        finally:
            self.unlead(thread=not slot.event.is_set())
        return slot.event.is_set()

    def send(self, payload: bytes) -> None:
        header = _HEADER.pack(len(payload))
        with self.send_lock:
            if self.closed:
                raise OSError("connection closed")
            self.sock.sendall(header)
            self.sock.sendall(payload)

    def send_within(self, payload: bytes, seconds: float) -> bool:
        """Send a small message, or give up (False) after ``seconds``: it never blocks
        longer on a daemon that stopped reading or on a sender stuck in ``send``."""
        end = time.monotonic() + seconds
        if not self.send_lock.acquire(timeout=max(seconds, 0.0)):
            return False
        try:
            if self.closed:
                return False
            data = memoryview(_HEADER.pack(len(payload)) + payload)
            while data:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                _r, w, _x = select.select([], [self.sock], [], left)
                if not w:
                    continue
                try:
                    n = self.sock.send(data, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    continue
                data = data[n:]
            return True
        except OSError:
            return False
        finally:
            self.send_lock.release()

    def fail(self, reason: str) -> None:
        """Mark dead, wake every pending call with daemon_lost, stop the reader."""
        with self.lock:
            if self.dead is None:
                self.dead = reason
            pending, self.pending = self.pending, {}
        for slot in pending.values():
            slot.error = self.dead
            slot.event.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self, reason: str) -> None:
        self.fail(reason)
        if self.reader.is_alive() and self.reader is not threading.current_thread():
            self.reader.join(5.0)
        with self.send_lock:
            if not self.closed:
                self.closed = True
                self.sock.close()

    def abandon_after_fork(self) -> None:
        # In a forked child: the socket is shared with the parent, so it must not be
        # shut down (that would cut the parent's connection too); closing our copy of
        # the descriptor is enough.  The reader thread does not exist in the child and
        # the locks may have been copied while held, so neither is touched.
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    # -- reader thread ----------------------------------------------------------------

    def _recv_exact(self, n: int) -> Optional[bytearray]:
        """``n`` bytes, or None on end of file before the first byte."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                if got == 0:
                    return None
                raise _Truncated("connection closed in the middle of a message")
            got += k
        return buf

    def read_one(self) -> Optional[str]:
        """Read and dispatch one message; None, or why the connection is unusable."""
        try:
            header = self._recv_exact(_HEADER.size)
            if header is None:
                return "the spindle daemon closed the connection"
            (length,) = _HEADER.unpack(header)
            if length > MAX_MESSAGE:
                return "the spindle daemon sent an oversize message (%d bytes, limit %d)" % (
                    length,
                    MAX_MESSAGE,
                )
            body = self._recv_exact(length) if length else bytearray()
            if body is None:
                raise _Truncated("connection closed in the middle of a message")
            try:
                msg = json.loads(body.decode("utf-8"))
            except ValueError as e:
                return "the spindle daemon sent malformed JSON: %s" % (e,)
            if not isinstance(msg, dict):
                return "the spindle daemon sent a message that is not a JSON object"
            self._dispatch(msg)
            return None
        except _Truncated as e:
            return "lost the spindle daemon: %s" % (e,)
        except (OSError, ValueError) as e:  # ValueError: the socket was closed under us
            return "lost the spindle daemon: %s" % (e,)
        except Exception as e:  # never die silently with callers waiting
            return "spindle client reader failed: %r" % (e,)

    def lost(self, reason: str) -> None:
        """Fail the connection for ``reason`` (with the daemon's id-0 error, if it sent one)."""
        if self.fatal and self.dead is None:
            reason = "%s after an error: %s" % (reason, self.fatal)
        self.fail(reason)

    def _read_loop(self) -> None:
        while True:
            reason = self.read_one()
            if reason is not None:
                break
        self.lost(reason)

    def _dispatch(self, msg: Dict[str, Any]) -> None:
        rid = msg.get("id")
        if type(rid) is not int or rid == 0:
            # id 0: a connection-level error; the daemon closes the connection next.
            err = msg.get("error")
            if isinstance(err, dict):
                self.fatal = "%s: %s" % (err.get("kind", "unknown"), err.get("message", ""))
            return
        with self.lock:
            slot = self.pending.pop(rid, None)
        if slot is None:
            return  # the caller gave up (wait timeout); drop the late reply
        slot.reply = msg
        slot.event.set()


_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _target_dict(target: Union[TargetSpec, Mapping[str, Any]]) -> Dict[str, Any]:
    if isinstance(target, TargetSpec):
        return target.to_dict()
    if isinstance(target, Mapping):
        return {k: v for k, v in target.items() if v is not None}
    raise TypeError("target must be a TargetSpec or a mapping, not %s" % type(target).__name__)


def _mode_int(mode: Union[None, int, str]) -> Optional[int]:
    if mode is None:
        return None
    if isinstance(mode, bool):
        raise TypeError("mode must be an int or an octal string")
    if isinstance(mode, int):
        value = mode
    elif isinstance(mode, str):
        try:
            value = int(mode, 8)
        except ValueError:
            raise ValueError("mode must be an octal string such as '0644', not %r" % (mode,)) from None
    else:
        raise TypeError("mode must be an int or an octal string")
    if not 0 <= value <= 0o7777:
        raise ValueError("mode out of range: %o" % value)
    return value


class Client:
    """A thread-safe connection to ``spindle serve --socket socket_path``.

    ``timeout`` is the default number of seconds a call waits for its reply (``None``:
    forever); every method also takes a keyword-only ``call_timeout`` to override it.
    A call that times out raises ``SpindleError("timeout")``; the daemon may still
    carry the request out.
    """

    def __init__(
        self,
        socket_path: PathLike,
        timeout: Optional[float] = None,
        liveness: "tuple[float, float]" = LIVENESS,
    ):
        self.socket_path = os.fspath(socket_path)
        self.timeout = timeout
        self.liveness = liveness
        self._lock = threading.Lock()
        self._conn: Optional[_Connection] = None
        self._ids = itertools.count(1)
        _clients.add(self)

    def __repr__(self) -> str:
        return "Client(%r, timeout=%r)" % (self.socket_path, self.timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- connection ---------------------------------------------------------------------

    def _connection(self) -> _Connection:
        with self._lock:
            conn = self._conn
            if conn is not None and conn.dead is None:
                return conn
            old, self._conn = conn, None
        if old is not None:  # dead: release its socket and reader before reconnecting
            old.close(old.dead or "replaced")
        with self._lock:
            if self._conn is not None and self._conn.dead is None:
                return self._conn  # another thread reconnected meanwhile
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout if self.timeout is not None else _CONNECT_TIMEOUT)
                sock.connect(self.socket_path)
                sock.settimeout(None)
            except OSError as e:
                sock.close()
                raise SpindleError(
                    "daemon_unavailable",
                    "cannot connect to the spindle daemon at %s: %s" % (self.socket_path, e),
                ) from None
            conn = _Connection(sock, self.socket_path)
            self._conn = conn
        return conn

    def close(self) -> None:
        """Drop the connection; pending calls raise daemon_lost.  A later call reconnects."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close("the client was closed")

    def _forget_after_fork(self) -> None:
        self._lock = threading.Lock()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abandon_after_fork()

    # -- requests -----------------------------------------------------------------------

    def request(
        self,
        op: str,
        target: Union[None, TargetSpec, Mapping[str, Any]] = None,
        *,
        call_timeout: Optional[float] = _DEFAULT,
        **fields: Any,
    ) -> Dict[str, Any]:
        """Send ``{"op": op, "target": target, **fields}`` and return the ``result``.

        Fields whose value is ``None`` are left out.  Raises ``SpindleError`` when the
        reply has ``ok: false`` (with the daemon's ``kind``/``message``/``host``) and in
        the client-side cases listed in the module docstring.
        """
        if "id" in fields:
            raise ValueError("the request id is chosen by the client")
        msg: Dict[str, Any] = {"op": op}
        label = None
        if target is not None:
            msg["target"] = _target_dict(target)
            label = msg["target"].get("name") or msg["target"].get("host")
        for key, value in fields.items():
            if value is not None:
                msg[key] = value
        wait = self.timeout if call_timeout is _DEFAULT else call_timeout

        with self._lock:
            rid = next(self._ids)
        msg["id"] = rid
        payload = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        if len(payload) > MAX_MESSAGE:
            raise SpindleError(
                "bad_request",
                "request is %d bytes, over the %d-byte limit" % (len(payload), MAX_MESSAGE),
                label,
            )

        conn = self._connection()
        try:
            slot = conn.register(rid)
        except SpindleError:
            # The connection died before anything was sent: safe to retry once afresh.
            conn = self._connection()
            slot = conn.register(rid)
        try:
            conn.send(payload)
        except OSError as e:
            conn.fail("lost the spindle daemon while sending: %s" % (e,))
        if not self._wait(conn, slot, wait, op):
            conn.discard(rid)
            if not slot.event.is_set():
                raise SpindleError(
                    "timeout", "no reply from the spindle daemon to %r within %ss" % (op, wait), label
                )
        if slot.error is not None:
            raise SpindleError("daemon_lost", slot.error, label)

        reply = slot.reply or {}
        ok = reply.get("ok")
        if ok is True:
            result = reply.get("result")
            return result if isinstance(result, dict) else {}
        if ok is False:
            err = reply.get("error")
            if not isinstance(err, dict):
                err = {}
            return self._raise(err, label)
        raise SpindleError("protocol", "malformed reply from the spindle daemon: %r" % (reply,), label)

    def _wait(self, conn: _Connection, slot: _Slot, wait: Optional[float], op: str) -> bool:
        """Wait up to ``wait`` seconds (None: without end) for ``slot``, asking the daemon
        whether it is alive after each ``liveness[0]`` seconds of silence; a daemon that
        does not answer fails the connection (the slot wakes with ``daemon_lost``)."""
        every, grace = self.liveness
        end = None if wait is None else time.monotonic() + wait
        while True:
            step = every if end is None else min(every, end - time.monotonic())
            if step > 0:
                got = conn.read_for(slot, step) if conn.lead() else slot.event.wait(step)
                if got:
                    return True
            if end is not None and time.monotonic() >= end:
                return slot.event.is_set()
            if op == "alive":
                continue
            why = self._unanswered(conn, grace)
            if why is not None:
                conn.fail(why)
                return True

    def _unanswered(self, conn: _Connection, grace: float) -> Optional[str]:
        """None when the daemon answers ``alive`` within ``grace`` seconds, else why not."""
        with self._lock:
            rid = next(self._ids)
        try:
            probe = conn.register(rid)
        except SpindleError:
            return None  # the connection is already dead: the caller's slot has woken
        payload = json.dumps({"op": "alive", "id": rid}).encode("ascii")
        start = time.monotonic()
        sent = conn.send_within(payload, grace)
        answered = sent and probe.event.wait(max(grace - (time.monotonic() - start), 0.0))
        conn.discard(rid)
        if answered or probe.event.is_set():
            return None  # any reply, an error one from an older daemon too, is an answer
        return (
            "the spindle daemon at %s did not answer a liveness check within %gs "
            "(stopped, wedged or starved of CPU?)" % (conn.path, grace)
        )

    @staticmethod
    def _raise(err: Mapping[str, Any], label: Optional[str]) -> Any:
        raise SpindleError(
            str(err.get("kind") or "unknown"),
            str(err.get("message") or ""),
            err.get("host") if err.get("host") is not None else label,
            {k: v for k, v in err.items() if k not in ("kind", "message", "host")},
        )

    # -- convenience ----------------------------------------------------------------------

    def ping(self, target, *, call_timeout=_DEFAULT) -> Dict[str, Any]:
        """Open the target's stream if needed; ``{"pong": True, "pid": N, "hello": {...}}``."""
        return self.request("ping", target, call_timeout=call_timeout)

    def open(self, target, *, call_timeout=_DEFAULT) -> Dict[str, Any]:
        """Start the target's stream (or check an idle one) without waiting for it:
        ``{"stream": "opening" | "ready" | "checking"}`` at once (docs/api.md, ``open``)."""
        return self.request("open", target, call_timeout=call_timeout)

    def exec(
        self,
        target,
        argv: Optional[Sequence[str]] = None,
        shell: Optional[str] = None,
        stdin: Union[None, bytes, bytearray, memoryview, str] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None,
        timeout: Optional[float] = None,
        *,
        login_shell: bool = False,
        tty: bool = False,
        call_timeout=_DEFAULT,
    ) -> ExecResult:
        """Run ``argv`` (no shell) or ``shell`` (``/bin/sh -c``) on the target.

        ``login_shell``: ``shell`` runs under the target user's login shell (as sshd runs
        a command) instead of ``/bin/sh``; ``tty``: on a new terminal (as ``ssh -tt``; the
        output, stderr included, comes back as stdout; no ``stdin``).
        ``stdin`` is bytes (a str is UTF-8 encoded).  ``timeout`` is the command's
        deadline on the target (process group killed, ``rc`` -9, ``timed_out`` True).
        Unless ``call_timeout`` is given, the wait for the reply is the client's
        ``timeout`` stretched to at least ``timeout + 60`` seconds.
        """
        if (argv is None) == (shell is None):
            raise ValueError("exec needs exactly one of argv or shell")
        if argv is not None:
            if isinstance(argv, (str, bytes)):
                raise TypeError("argv must be a sequence of strings, not a string")
            argv = [os.fspath(a) for a in argv]
            if not argv or not all(isinstance(a, str) for a in argv):
                raise ValueError("argv must be a non-empty sequence of strings")
        stdin_b64 = None
        if stdin is not None:
            data = stdin.encode("utf-8") if isinstance(stdin, str) else bytes(stdin)
            stdin_b64 = base64.b64encode(data).decode("ascii")
        if call_timeout is _DEFAULT:
            call_timeout = self.timeout
            if call_timeout is not None and timeout is not None:
                call_timeout = max(call_timeout, float(timeout) + _EXEC_GRACE)
        result = self.request(
            "exec",
            target,
            call_timeout=call_timeout,
            argv=argv,
            shell=shell,
            stdin_b64=stdin_b64,
            env=dict(env) if env is not None else None,
            cwd=os.fspath(cwd) if cwd is not None else None,
            timeout=timeout,
            login_shell=True if login_shell else None,
            tty=True if tty else None,
        )
        try:
            return ExecResult(
                rc=int(result["rc"]),
                stdout=base64.b64decode(result.get("stdout_b64") or ""),
                stderr=base64.b64decode(result.get("stderr_b64") or ""),
                timed_out=bool(result.get("timed_out", False)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SpindleError(
                "protocol", "malformed exec result %r: %s" % (result, e), _label_of(target)
            ) from None

    def put(
        self,
        target,
        src: PathLike,
        dest: PathLike,
        mode: Union[None, int, str] = None,
        owner: Optional[str] = None,
        group: Optional[str] = None,
        *,
        apply_umask: bool = False,
        digests: Optional[List[str]] = None,
        sync: bool = True,
        call_timeout=_DEFAULT,
    ) -> Dict[str, Any]:
        """Copy controller file ``src`` to ``dest`` on the target; ``{"path", "size", "sha256"}``.

        ``src`` is made absolute here (the daemon has its own working directory).
        ``mode`` is an int or an octal string (``"0644"``); it is sent as an int. With
        ``apply_umask`` the target's umask applies to it, as for a file sftp creates.
        ``digests`` (of ``sha1``, ``md5``, ``sha256``) replace sha256 in the reply: the agent
        takes them while receiving and remembers them for a module run on the file next
        (Ansible's copy). ``sync=False``: no fsync before the rename.
        """
        return self.request(
            "put",
            target,
            call_timeout=call_timeout,
            src=os.path.abspath(os.fspath(src)),
            dest=os.fspath(dest),
            mode=_mode_int(mode),
            owner=owner,
            group=group,
            apply_umask=apply_umask or None,
            digests=digests,
            sync=None if sync else False,
        )

    def fetch(self, target, src: PathLike, dest: PathLike, *, call_timeout=_DEFAULT) -> Dict[str, Any]:
        """Copy target file ``src`` to controller path ``dest`` (made absolute here);
        ``{"size", "sha256", "mode"}``."""
        return self.request(
            "fetch",
            target,
            call_timeout=call_timeout,
            src=os.fspath(src),
            dest=os.path.abspath(os.fspath(dest)),
        )

    def stats(self, *, call_timeout=_DEFAULT) -> Dict[str, Any]:
        """The daemon's counters."""
        return self.request("stats", call_timeout=call_timeout)

    def close_target(self, target, *, call_timeout=_DEFAULT) -> Dict[str, Any]:
        """Shut down the daemon's stream to ``target`` (op ``close``)."""
        return self.request("close", target, call_timeout=call_timeout)

    def shutdown(self, *, call_timeout=_DEFAULT) -> Dict[str, Any]:
        """Stop the daemon (it replies first), then close this client."""
        try:
            return self.request("shutdown", call_timeout=call_timeout)
        finally:
            self.close()


def _label_of(target: Any) -> Optional[str]:
    try:
        spec = _target_dict(target)
    except TypeError:
        return None
    return spec.get("name") or spec.get("host")
