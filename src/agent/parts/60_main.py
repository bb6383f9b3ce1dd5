# spindle agent, 60_main: dispatch of frames to ops, the agent loop and main().
# One of the parts src/agent/parts/*.py joined in name order into one source (one
# namespace) by transport::bootstrap; see 00_channel.py.


def _after_fork_in_child():
    # A forked module run must never write frames or log records into the parent's stream.
    logging.getLogger().handlers = []


THREADED = {
    "ping": op_ping,
    "exec": op_exec,
    "fetch_file": op_fetch_file,
    "run_module": op_run_module,
    "spawn_context": op_spawn_context,
    "copy_fast": op_copy_fast,
    "copy_stream": op_copy_fast,
    "relay_put": op_relay_put,
    "cache_drop": op_cache_drop,
}


def _interpreter_identity():
    """(device, inode) of the program this agent runs as (sys.executable, its symlinks
    followed), or None when it cannot be told."""
    try:
        st = os.stat(sys.executable)
    except (OSError, TypeError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


class Retire(object):
    """Tells the controller once that this agent should serve no new task: a task replaced
    its interpreter on disk (a package upgrade of python3, or `python3` now another version).
    Stock Ansible starts the new one for its next task; so does the daemon, on a new stream
    or context, while this agent finishes what it runs and is closed (protocol.md, "retire").
    Checked after each threaded call: one stat()."""

    def __init__(self):
        self.start = _interpreter_identity()
        self.sent = False

    def check(self, chan):
        if self.sent or self.start is None:
            return
        now = _interpreter_identity()
        if now == self.start:
            return
        self.sent = True
        why = "its interpreter %s %s on the target since it started" % (
            sys.executable,
            "is gone" if now is None else "was replaced",
        )
        log.info("retiring: %s", why)
        chan.send(REPLY, 0, 0, 0, dumps({"retire": why}))


RETIRE = Retire()


def run_call(chan, call_id, fn, call):
    """Run one operation; every failure becomes an ERROR reply, never an agent death. The
    reply of a call cancelled meanwhile is discarded."""
    try:
        result = fn(chan, call_id, call)
    except AgentError as exc:
        kind, message = exc.kind, exc.message  # `exc` is unbound after the except block
        reply = lambda: chan.reply_error(call_id, kind, message)  # noqa: E731
    except Exception:
        text = traceback.format_exc()
        reply = lambda: chan.reply_error(call_id, "internal", text)  # noqa: E731
    else:
        reply = lambda: chan.reply(call_id, result)  # noqa: E731
    run = CALLS.finish(call_id)
    if run is not None and run.cancelled:
        log.debug("call %d was cancelled: reply discarded", call_id)
    else:
        reply()
    RETIRE.check(chan)


class CallThreads(object):
    """The threads that run threaded calls. A call goes to a thread that waits for one, else
    to a new thread: starting a thread for every call cost the agent ~0.3 ms of CPU per task
    (py-spy over 100 `command` tasks). A thread whose call is done waits up to IDLE_SECONDS
    for the next; at most MAX_IDLE wait, the others end. Invariant (under the lock): calls
    queued <= threads waiting, so a queued call always has a thread to take it."""

    MAX_IDLE = 4
    IDLE_SECONDS = 30.0

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._work = collections.deque()
        self._idle = 0

    def submit(self, fn, args, name):
        with self._cond:
            if self._idle > len(self._work):
                self._work.append((fn, args, name))
                self._cond.notify()
                return
        t = threading.Thread(target=self._run, args=(fn, args, name), name=name)
        t.daemon = True
        t.spindle_call = True  # the agent's own: not a thread a module run left behind
        t.start()

    def _run(self, fn, args, name):
        me = threading.current_thread()
        while True:
            me.name = name
            fn(*args)
            fn = args = None  # nothing of the call is kept while waiting
            me.name = "idle"
            with self._cond:
                if self._idle >= self.MAX_IDLE:
                    return
                self._idle += 1
                deadline = time.monotonic() + self.IDLE_SECONDS
                while not self._work:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._idle -= 1
                        return
                    self._cond.wait(left)
                self._idle -= 1
                fn, args, name = self._work.popleft()


THREADS = CallThreads()


def start_threaded(chan, call_id, fn, call, name):
    """Run a call on a thread of its own (THREADS), registered in CALLS so that `cancel` can
    reach it."""
    CALLS.start(call_id)
    THREADS.submit(run_call, (chan, call_id, fn, call), name)


def op_cancel(call):
    """`{"op": "cancel", "handle": N}`: the controller gave up on call N (its deadline passed
    or its client went away). A command it runs is killed with its process group, a fetch
    stops sending, and its reply is never sent. -> {"cancelled": bool} (false: no such call
    running, e.g. it just finished)."""
    handle = call.get("handle")
    if isinstance(handle, bool) or not isinstance(handle, int) or not 0 < handle < 2**32:
        raise AgentError("bad_request", "cancel needs a call handle (integer 1..2^32-1)")
    run = CALLS.get(handle)
    if run is None:
        return {"cancelled": False}
    run.cancel()
    log.debug("call %d cancelled", handle)
    return {"cancelled": True}


def store_blobs(blobs, packed=False):
    """Keep code blobs pushed with a CALL (sha256 hex -> base64, of its zlib compression when
    `packed`), checking each hash. The packed form is kept too, for the contexts this agent
    passes them on to."""
    if not isinstance(blobs, dict):
        raise AgentError("bad_request", "blobs must be an object")
    for digest, b64 in blobs.items():
        data = base64.b64decode(b64)
        if packed:
            data = zlib.decompress(data)
        if hashlib.sha256(data).hexdigest() != digest:
            raise AgentError("bad_request", "blob %s does not match its hash" % digest)
        CODE.put(digest, data, b64 if packed else None)


class Agent(object):
    def __init__(self, chan):
        self.chan = chan
        self.puts = {}
        self.partial = {}  # call id -> payload parts of a CALL split with MORE

    def on_call(self, call_id, payload, flags=0):
        if flags & MORE:
            self.partial.setdefault(call_id, []).append(payload)
            return
        if call_id in self.partial:
            parts = self.partial.pop(call_id)
            parts.append(payload)
            payload = b"".join(parts)
        try:
            call = json.loads(payload.decode("utf-8"))
            if not isinstance(call, dict) or not isinstance(call.get("op"), str):
                raise ValueError("CALL payload must be an object with a string op")
            if "blobs" in call:
                store_blobs(call.pop("blobs"))
            if "blobs_z" in call:
                store_blobs(call.pop("blobs_z"), packed=True)
            if "blob_refs" in call:
                raise AgentError(
                    "missing_blobs",
                    "module code the agent that started this "
                    "one should have sent is not there: %s"
                    % ", ".join(str(h)[:12] for h in call["blob_refs"]),
                )
        except AgentError as exc:
            return self.chan.reply_error(call_id, exc.kind, exc.message)
        except Exception as exc:  # bad UTF-8 or JSON, too deeply nested, bad base64, ...
            return self.chan.reply_error(call_id, "bad_request", str(exc))
        op = call["op"]
        log.debug("call %s handle %d", op, call_id)
        if op == "spawn_context":
            STARTING.begin(call.get("ctx"))
            fn = THREADED[op]

            def spawn(chan, call_id, call):
                try:
                    return fn(chan, call_id, call)
                finally:
                    STARTING.end(call.get("ctx"))

            start_threaded(self.chan, call_id, spawn, call, "%s-%d" % (op, call_id))
        elif op in THREADED:
            start_threaded(self.chan, call_id, THREADED[op], call, "%s-%d" % (op, call_id))
        elif op == "cancel":
            run_call(self.chan, call_id, lambda chan, call_id, call: op_cancel(call), call)
        elif op in ("put_file", "cache_put"):
            if call_id in self.puts:
                return self.chan.reply_error(call_id, "bad_request", "handle already in use")
            # errors are kept and replied after EOF/ABORT
            self.puts[call_id] = Put(call) if op == "put_file" else CachePut(call)
        elif op == "log_level":
            level = LEVELS.get(str(call.get("level")).upper())
            if level is None:
                return self.chan.reply_error(
                    call_id, "bad_request", "unknown level %r" % (call.get("level"),)
                )
            logging.getLogger().setLevel(level)
            self.chan.reply(call_id, {})
        elif op == "store_blobs":  # code for contexts this agent starts (stored above)
            self.chan.reply(call_id, {})
        elif op == "blob_list":
            self.chan.reply(call_id, {"hashes": CODE.hashes()})
        elif op == "close_context":
            ctx = CONTEXTS.get(call.get("ctx"))
            if ctx is not None:
                ctx.close()
            self.chan.reply(call_id, {"closed": ctx is not None})
        elif op == "shutdown":
            log.info("shutdown requested")
            self.chan.reply(call_id, {})
            die(0)
        else:
            self.chan.reply_error(call_id, "bad_request", "unknown op %r" % (op,))

    def on_data(self, handle, flags, payload):
        put = self.puts.get(handle)
        if put is None:
            log.debug("DATA for unknown handle %d dropped", handle)
            return
        try:
            if flags & ABORT:
                del self.puts[handle]
                put.fail(AgentError("io", "transfer aborted by the controller"))
                return self.chan.reply_error(handle, put.error.kind, put.error.message)
            if payload:
                put.write(payload)
            if flags & EOF:
                del self.puts[handle]
                run_call(self.chan, handle, lambda chan, call_id, call: put.finish(), None)
        except Exception:
            self.puts.pop(handle, None)
            put.fail(AgentError("internal", traceback.format_exc()))
            self.chan.reply_error(handle, "internal", put.error.message)

    def loop(self):
        while True:
            try:
                frame = self.chan.read_frame()
            except FrameError as exc:
                die(2, "spindle agent: frame error: %s" % exc)
            except OSError as exc:
                die(1, "spindle agent: read error: %s" % exc)
            if frame is None:
                log.debug("input closed, exiting")
                die(0)
            kind, flags, handle, reply_to, payload, dst, _src = frame
            if dst not in (SELF, CONTROLLER):  # for a nested context (become, via): relay it
                ctx = CONTEXTS.get(dst)
                if ctx is not None:
                    ctx.forward(kind, flags, handle, reply_to, payload)
                    continue
                ctx = CONTEXTS.behind(dst)  # deeper: to the child it is behind
                if ctx is None:
                    log.debug("frame for context %d, which is gone: dropped", dst)
                else:
                    ctx.forward(kind, flags, handle, reply_to, payload, dst=dst)
                continue
            try:
                if kind == CALL:
                    self.on_call(handle, payload, flags)
                elif kind == DATA:
                    self.on_data(handle, flags, payload)
                else:
                    log.warning("ignoring frame of kind %d from the controller", kind)
            except Exception:  # never die on a bad request
                log.error("handling a frame of kind %d failed", kind, exc_info=True)
                if kind == CALL:
                    self.chan.reply_error(handle, "internal", traceback.format_exc())


def main():
    global UMASK
    TEMPLATE_STREAMS[:] = [sys.stdout, sys.stderr]
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
    rfd, wfd = os.dup(0), os.dup(1)  # non-inheritable private frame descriptors
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # stray output (print, children) goes to stderr
    os.close(null)
    UMASK = os.umask(0o022)
    os.umask(UMASK)
    chan = Channel(rfd, wfd)
    hello = {
        "proto": PROTO,
        "python": platform.python_version(),
        "executable": sys.executable,
        # the program resolved, for the daemon to match interpreters (not in a venv,
        # whose python resolves to its base but sees other packages)
        "realpath": None if _my_venv() else os.path.realpath(sys.executable),
        # other paths of this same interpreter (same program, same venv), e.g. the python3.11
        # discovery finds beside the python3 the login PATH started
        "aliases": _interpreter_aliases(),
        "hostname": socket.gethostname(),
        "uid": os.getuid(),
        "pid": os.getpid(),
    }
    chan.send(HELLO, 0, 0, 0, dumps(hello))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(LogHandler(chan))
    root.setLevel(logging.INFO)
    log.info("agent started: python %s pid %d", hello["python"], hello["pid"])
    Agent(chan).loop()


if __name__ == "__main__":
    main()
