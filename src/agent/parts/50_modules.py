# spindle agent, 50_modules: modules in the agent (run_module through the module runner, copy_fast/copy_stream).
# One of the parts src/agent/parts/*.py joined in name order into one source (one
# namespace) by transport::bootstrap; see 00_channel.py.


# ---- modules in the agent (src/agent/modrun/, joined and embedded by the controller as base64)

_MODRUN = []
MODULE_LOCK = threading.Lock()  # one in-process module run at a time (they share the process)
TEMPLATE_STREAMS = []  # the interpreter's own stdout/stderr: encodings a fresh one gets


def modrun():
    if not _MODRUN:
        src = globals().get("_SPINDLE_MODRUN_B64")
        if src is None:
            raise AgentError("internal", "this agent was started without the module runner")
        mod = types.ModuleType("spindle_modrun")
        exec(compile(base64.b64decode(src), "<spindle-modrun>", "exec"), mod.__dict__)
        mod.DIGESTS = DIGESTS  # what puts received, for AnsibleModule.digest_from_file
        _MODRUN.append(mod)
    return _MODRUN[0]


def op_run_module(chan, call_id, call):
    """Run an Ansible module from cached blobs: in this process (state restored) or forked;
    with `file`, an old-style, WANT_JSON or binary module from a private temp dir."""
    if "file" in call:
        return _run_file_module(chan, call_id, call)
    return _run_module(call)


# Characters a temp dir path may have to take the placeholder's place in the command as it is
# (what shlex.quote leaves unquoted, so the command's quoting stays right).
_PLAIN_PATH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def _file_name(name):
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _run_file_module(chan, call_id, call):
    """An old-style, WANT_JSON or binary module as Ansible runs it from files, in one call:
    `file` = {"tmp": the placeholder dir Ansible's command names, "base": the remote tmp
    (`~` and variables expanded here, as the user this agent runs as), "name":
    "ansible-tmp-...", "shell": the command, "login_shell", "tty", "cwd", "files": [{"name",
    "mode" (before the umask; u+x is added, as Ansible's chmod does), "sha" (a code blob of the
    manifest) or "data_b64"}]}. The dir is made 0700 (parents too, as `umask 77; mkdir -p`),
    the files written, the command run as `exec` runs it with the dir's real path in place of
    the placeholder, and the dir removed whatever happens. A dir that cannot be made answers
    {"tmp_failed": why} (nothing ran)."""
    spec = call.get("file")
    manifest, _core = _module_set(call)
    if not isinstance(spec, dict) or not isinstance(manifest, dict):
        raise AgentError("bad_request", "run_module file needs file and manifest objects")
    tmp, base, name, shell = spec.get("tmp"), spec.get("base"), spec.get("name"), spec.get("shell")
    files = spec.get("files")
    if (
        not all(isinstance(x, str) and x for x in (tmp, base, shell))
        or not _file_name(name)
        or not name.startswith("ansible-tmp-")
        or tmp not in shell
        or not isinstance(files, list)
    ):
        raise AgentError("bad_request", "run_module file needs tmp, base, name, shell and files")
    contents = []
    for f in files:
        if not isinstance(f, dict) or not _file_name(f.get("name")):
            raise AgentError("bad_request", "run_module file: each file needs a plain name")
        mode = f.get("mode", 0o600)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777:
            raise AgentError("bad_request", "run_module file: mode must be 0..0o7777")
        if "sha" in f:
            if f["sha"] not in manifest.values():
                raise AgentError(
                    "bad_request", "run_module file %s: its sha is not in the manifest" % f["name"]
                )
            data = CODE.get(f["sha"])
            if data is None:
                raise AgentError(
                    "missing_blobs", "blob %s for %s is not on the agent" % (f["sha"], f["name"])
                )
        else:
            try:
                data = base64.b64decode(f.get("data_b64") or "")
            except (TypeError, ValueError) as exc:
                raise AgentError("bad_request", "data_b64: %s" % exc)
        contents.append((f["name"], (mode & ~UMASK & 0o7777) | 0o100, data))
    where = os.path.abspath(os.path.expandvars(os.path.expanduser(c_string("base", base))))
    real = os.path.join(where, name)
    if not set(real) <= _PLAIN_PATH:
        return {"tmp_failed": "the temp dir %r would need shell quoting in the module's command" % real}
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        os.mkdir(real, 0o700)
    except OSError as exc:
        return {"tmp_failed": "%s: %s" % (real, exc)}
    import shutil

    try:
        for fname, mode, data in contents:
            try:
                fd = os.open(os.path.join(real, fname), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    write_all(fd, data)
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise AgentError("io", "writing %s: %s" % (os.path.join(real, fname), exc))
        run = {"shell": shell.replace(tmp, real), "login_shell": bool(spec.get("login_shell"))}
        for key in ("tty", "cwd"):
            if spec.get(key) is not None:
                run[key] = spec[key]
        return op_exec(chan, call_id, run)
    finally:
        shutil.rmtree(real, ignore_errors=True)


# Module file sets (manifest + warm core list) by the id the controller gave them: a later
# run_module with only "set_id" reuses one (the controller sends each set once per stream, and
# at most MAX_MODULE_SETS of them).
MODULE_SETS = {}
MAX_MODULE_SETS = 1024


def _module_set(call):
    """(manifest, core) of a run_module call: given in it (and kept under its set_id, which
    the controller will send alone from now on), or the kept set its set_id names."""
    manifest, core, set_id = call.get("manifest"), call.get("core") or [], call.get("set_id")
    if isinstance(set_id, str) and manifest is None:
        known = MODULE_SETS.get(set_id)
        if known is None:
            raise AgentError("bad_request", "module set %s is not on the agent" % set_id)
        return known
    if isinstance(set_id, str) and isinstance(manifest, dict) and len(MODULE_SETS) < MAX_MODULE_SETS:
        MODULE_SETS[set_id] = (manifest, core)
    return manifest, core


def _venv_of(executable):
    """The virtualenv `executable` runs in (the real path of the directory whose pyvenv.cfg
    Python finds beside the executable or one level up), or None."""
    here = os.path.dirname(os.path.abspath(executable))
    for d in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(d, "pyvenv.cfg")):
            return os.path.realpath(d)
    return None


def _my_venv():
    return os.path.realpath(sys.prefix) if sys.prefix != getattr(sys, "base_prefix", sys.prefix) else None


# Answers of _runs_interpreter for absolute paths: path -> ((st_dev, st_ino) the path led to,
# answer). Asked for every module run; the real paths cost ~0.2 ms a run. Bounded.
_RUNS = {}
MAX_RUNS_MEMO = 64


def _runs_interpreter(interp):
    """Whether this agent is `interp` (a path, or a name looked up on PATH as exec would):
    the same program, and the same virtualenv (a venv's python is a symlink to its base
    interpreter, but sees other packages). For an absolute path the answer is kept while the
    path leads to the same file (one stat a run: a symlink switched to another program, as
    `update-alternatives` does, is seen)."""
    if not isinstance(interp, str):
        return False
    if not interp.startswith("/"):
        return _is_interpreter(interp)
    try:
        st = os.stat(interp)
    except OSError:
        return False
    ident = (st.st_dev, st.st_ino)
    known = _RUNS.get(interp)
    if known is not None and known[0] == ident:
        return known[1]
    answer = _is_interpreter(interp)
    if interp in _RUNS or len(_RUNS) < MAX_RUNS_MEMO:
        _RUNS[interp] = (ident, answer)
    return answer


def _is_interpreter(interp):
    if "/" not in interp:
        import shutil

        interp = shutil.which(interp) or interp
    if os.path.realpath(interp) != os.path.realpath(sys.executable):
        return False
    return _venv_of(interp) == _my_venv()


MAX_ALIASES = 16  # the HELLO's `aliases`, at most


def _interpreter_aliases():
    """Other paths that run this very interpreter, for the HELLO (the daemon cannot resolve
    paths on the target): the python* names beside the executable that _runs_interpreter
    accepts (a venv's python, python3, python3.11; /usr/bin's python3 and python3.11), and
    outside a venv those beside the program it resolves to. At most MAX_ALIASES."""
    exe = sys.executable
    dirs = [os.path.dirname(os.path.abspath(exe))]
    if not _my_venv():
        dirs.append(os.path.dirname(os.path.realpath(exe)))
    out = []
    for d in dirs:
        try:
            names = sorted(n for n in os.listdir(d) if n.startswith("python"))
        except OSError:
            continue
        for n in names:
            p = os.path.join(d, n)
            if p == exe or p in out or not _runs_interpreter(p):
                continue
            out.append(p)
            if len(out) >= MAX_ALIASES:
                return out
    return out


ASYNC_MAX_LIMIT = 2**31 - 1  # seconds: the longest async time limit accepted


def _async_job(job):
    """The `async` of a run_module call, checked: {"jid": "j<1-12 digits>" (the controller's
    prefix; the job id adds the job's pid, as async_wrapper does), "limit": seconds (0 to
    ASYNC_MAX_LIMIT; 0, as gather_facts gives its parallel jobs: killed at the first check), "ints": 2.18's 1/0 started/finished flags, "blank_junk": trailing blank
    lines after the JSON are junk (before 2.21)}."""
    if not isinstance(job, dict):
        raise AgentError("bad_request", "async must be an object")
    jid, limit = job.get("jid"), job.get("limit")
    if (
        not isinstance(jid, str)
        or not 2 <= len(jid) <= 13
        or jid[0] != "j"
        or any(c not in "0123456789" for c in jid[1:])
    ):
        raise AgentError("bad_request", "async.jid must be j followed by 1 to 12 digits")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= ASYNC_MAX_LIMIT:
        raise AgentError("bad_request", "async.limit must be an integer in 0..%d" % ASYNC_MAX_LIMIT)
    return {
        "jid": jid,
        "limit": limit,
        "ints": bool(job.get("ints")),
        "blank_junk": bool(job.get("blank_junk", True)),
    }


def _run_module(call):
    req, mode = call.get("req"), call.get("mode", "inproc")
    manifest, core = _module_set(call)
    if (
        not isinstance(req, dict)
        or not isinstance(manifest, dict)
        or mode not in ("inproc", "warm", "fork")
        or not isinstance(core, list)
    ):
        raise AgentError("bad_request", "run_module needs req, manifest, mode inproc|warm|fork")
    interp = call.get("interpreter")
    if interp and not _runs_interpreter(interp):
        return {"fallback": "interpreter %s is not the agent's %s" % (interp, sys.executable)}
    if isinstance(interp, str) and interp.startswith("/") and interp != sys.executable:
        # Another path of this same program and venv (a venv's python3.11 beside the python3
        # the agent started as): the module sees the sys.executable a fresh one would.
        req = dict(req, executable=interp)
    files = {}
    for path, digest in manifest.items():
        data = CODE.get(digest)
        if data is None:
            raise AgentError("missing_blobs", "blob %s for %s is not on the agent" % (digest, path))
        files[path] = data
    out, err = TEMPLATE_STREAMS or (sys.__stdout__, sys.__stderr__)
    if "async" in call:  # an async task: a detached job, as Ansible's async_wrapper starts it
        r = modrun().start_async(req, files, _async_job(call["async"]), out, err, disk=bool(call.get("disk")))
    elif call.get("disk"):  # may re-execute itself: forked, its payload in a private temp dir
        r = modrun().run(req, files, "fork", out, err, core, disk=True)
    elif mode != "fork" and MODULE_LOCK.acquire(False):
        try:
            r = modrun().run(req, files, mode, out, err, core, shas=manifest)
        finally:
            MODULE_LOCK.release()
    else:
        # Asked to fork, or another module runs in this process now (tasks of several hosts
        # delegated to one): in a forked child, alongside it, as stock runs them in parallel.
        r = modrun().run(req, files, "fork", out, err, core, shas=manifest)
    return {
        "rc": r["rc"],
        "stdout_b64": base64.b64encode(r["stdout"]).decode("ascii"),
        "stderr_b64": base64.b64encode(r["stderr"]).decode("ascii"),
        "seconds": r["seconds"],
    }


def _sha1_of(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def op_copy_fast(chan, call_id, call):
    """Ansible's copy action for one small file in one call: the decisions the action takes
    on the controller after its remote stat (stat here with the same rules: follow, sha1),
    then the `copy` module on the content staged where the module's src says, or the `file`
    module when the content is already there. Cases the action handles with more steps (dest
    is a directory, an unchanged file reached through a symlink) answer {"outcome": "stock"}
    before anything is changed.

    A large file (op `copy_stream`, which an agent without it refuses as unknown, so the
    controller takes the stock flow) does not come inline: the first call answers {"outcome": "send"}
    when the content differs and `staged` (beside dest: the module's move is a rename) can be
    written; the controller then puts the file there (a stream at line rate) and calls again
    with `prestaged`, which runs the module on it. The staged file never outlives the call.
    Its first call may come before the controller's checksum (`checksum` null, the source's
    `size` given): a dest that is missing or of another size differs whatever the checksums;
    one of the same size answers {"outcome": "checksum"} (call again with it)."""
    dest, follow = call.get("dest"), bool(call.get("follow"))
    checksum, staged, size = call.get("checksum"), call.get("staged"), call.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        size = None
    big, prestaged = call.get("op") == "copy_stream", bool(call.get("prestaged"))
    copy_run, file_run = call.get("copy"), call.get("file")
    for run in (copy_run, file_run):  # keep both sets: the controller sent each once
        if isinstance(run, dict):
            _module_set(run)
    try:
        data = base64.b64decode(call.get("data_b64") or "")
    except (TypeError, ValueError) as exc:
        raise AgentError("bad_request", "data_b64: %s" % exc)
    by_size = checksum is None and big and not prestaged and size is not None
    if not (isinstance(checksum, str) or by_size):
        raise AgentError("bad_request", "copy_fast needs dest, checksum, staged, copy, file")
    if (
        not all(isinstance(x, str) for x in (dest, staged))
        or not isinstance(copy_run, dict)
        or not isinstance(file_run, dict)
    ):
        raise AgentError("bad_request", "copy_fast needs dest, checksum, staged, copy, file")
    path = os.path.expanduser(dest)
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        return {"outcome": "stock"}
    remote = "1"  # what the action compares with when dest does not exist
    if st is not None and stat.S_ISREG(st.st_mode):
        if size is not None and st.st_size != size:
            remote = ""  # another size: the content differs (no need to read it)
        elif checksum is None:
            return {"outcome": "checksum"}
        else:
            try:
                remote = _sha1_of(path)
            except OSError:
                remote = ""
    elif st is not None:
        remote = ""
    src = os.path.expanduser(staged)
    if remote == checksum:
        if prestaged:
            _unlink_quietly(src)
        if follow and os.path.islink(path):
            return {"outcome": "stock"}  # the action re-targets dest to the link's source
        out = _run_module(file_run)
        if "fallback" in out:
            return {"outcome": "stock"}
        out["outcome"] = "file"
        return out
    if big and not prestaged:
        where = os.path.dirname(src) or "."
        if not (os.path.isdir(where) and os.access(where, os.W_OK | os.X_OK)):
            return {"outcome": "stock"}
        return {"outcome": "send"}
    if prestaged:
        try:
            if not stat.S_ISREG(os.lstat(src).st_mode):
                return {"outcome": "stock"}
        except OSError:
            return {"outcome": "stock"}
        try:
            out = _run_module(copy_run)
        finally:
            _unlink_quietly(src)  # moved by the module when it succeeded
        if "fallback" in out:
            return {"outcome": "stock"}
        out["outcome"] = "copy"
        return out
    top = os.path.dirname(src)
    made = False  # only a directory made here is removed here
    try:
        os.makedirs(os.path.dirname(top), mode=0o700, exist_ok=True)
        os.mkdir(top, 0o700)
        made = True
        fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
    except OSError:  # e.g. a become user without a usable home: the stock flow copes
        if made:
            import shutil

            shutil.rmtree(top, ignore_errors=True)
        return {"outcome": "stock"}
    try:
        out = _run_module(copy_run)
    finally:
        import shutil

        shutil.rmtree(top, ignore_errors=True)
    if "fallback" in out:
        return {"outcome": "stock"}
    out["outcome"] = "copy"
    return out


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
