# spindle module runner, 20_run: one module run (the <stdin> shim; in-process, forked, or from a temp dir)
# One of the parts src/agent/modrun/*.py joined in name order into one source (one module,
# spindle_modrun) by transport::bootstrap; see 00_importer.py.

# --------------------------------------------------------------------------- run one module


class _AtExit(object):
    """Collects atexit.register() calls made by the module (AnsibleModule.tmpdir cleanup...)."""

    def __init__(self):
        self.calls = []
        self._reg, self._unreg = atexit.register, atexit.unregister

    def register(self, func, *a, **kw):
        self.calls.append((func, a, kw))
        return func

    def unregister(self, func):
        self.calls = [c for c in self.calls if c[0] is not func]

    def __enter__(self):
        atexit.register, atexit.unregister = self.register, self.unregister
        return self

    def __exit__(self, *exc):
        atexit.register, atexit.unregister = self._reg, self._unreg

    def run(self):
        # like the interpreter at exit: LIFO, errors reported and ignored
        while self.calls:
            func, a, kw = self.calls.pop()
            try:
                func(*a, **kw)
            except SystemExit:
                pass
            except BaseException:
                sys.stderr.write('Exception ignored in atexit callback: %r\n' % (func,))
                traceback.print_exc()


def _exit_code(exc):
    """The process exit status the interpreter derives from SystemExit(code)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write('%s\n' % (code,))
    return 1


def _std_streams(template_out, template_err, env):
    """Fresh sys.stdin/stdout/stderr over fds 0/1/2 configured like a new interpreter's:
    same encoding/errors as the agent's own (computed from the same locale), and unbuffered
    iff PYTHONUNBUFFERED is non-empty in the run's environment."""
    if env.get('PYTHONIOENCODING', os.environ.get('PYTHONIOENCODING')) != os.environ.get('PYTHONIOENCODING'):
        raise NotImplementedError('PYTHONIOENCODING changed by the task: use a fresh interpreter')
    unbuffered = bool(env.get('PYTHONUNBUFFERED'))

    def writer(fd, template, line_buffering):
        raw = io.FileIO(fd, 'w', closefd=False)
        if unbuffered:
            return io.TextIOWrapper(
                raw,
                encoding=template.encoding,
                errors=template.errors,
                line_buffering=line_buffering,
                write_through=True,
            )
        return io.TextIOWrapper(
            io.BufferedWriter(raw),
            encoding=template.encoding,
            errors=template.errors,
            line_buffering=line_buffering,
        )

    stdin = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, 'r', closefd=False)),
        encoding=template_out.encoding,
        errors=template_out.errors,
    )
    # CPython 3.9+: stderr is line buffered unless -u/PYTHONUNBUFFERED
    return stdin, writer(1, template_out, False), writer(2, template_err, not unbuffered)


_SHIMS = {}  # (dialect, frame lines) -> the shim's code object; a few per agent at most


def _shim(req):
    """The shim of ``req``'s wrapper dialect and frame lines, compiled once per agent."""
    ln = req.get('tb_lines')
    if not isinstance(ln, dict) or not all(
        type(ln.get(k)) is int and 0 < ln[k] <= 100000 for k in ('invoke', 'main', 'module')
    ):
        ln = {'invoke': 3, 'main': 4, 'module': 5}  # none, or out of range: the shim's own
    key = (req['dialect'], ln['invoke'], ln['main'], ln['module'])
    code = _SHIMS.get(key)
    if code is None:
        code = _compile_shim(req['dialect'], ln)
        if len(_SHIMS) < 16:
            _SHIMS[key] = code
    return code


def _compile_shim(dialect, ln):
    """Code standing in for the wrapper frames, compiled as "<stdin>" with the wrapper's own
    line numbers so that an uncaught exception prints exactly the stock traceback:
      File "<stdin>", line <module>, in <module>
      File "<stdin>", line <main>, in _ansiballz_main
      File "<stdin>", line <invoke>, in invoke_module"""
    if dialect == 'v2':
        call = (
            '_loader.run_module(json_params=_p, profile=_profile, module_fqn=_fqn, '
            'modlib_path=_modlib, extensions=_ext)'
        )
    else:
        call = (
            'runpy.run_module(mod_name=_fqn, init_globals=dict(_module_fqn=_fqn, _modlib_path=_modlib), '
            'run_name="__main__", alter_sys=True); '
            'print(\'{"msg": "New-style module did not handle its own exit", "failed": true}\'); sys.exit(1)'
        )
    src = ['def _ansiballz_main():', '    def invoke_module():']
    src += [''] * (ln['invoke'] - 1 - len(src)) + ['        ' + call]
    src += [''] * (ln['main'] - 1 - len(src)) + ['    invoke_module()']
    src += [''] * (ln['module'] - 1 - len(src)) + ['_ansiballz_main()']
    return compile('\n'.join(src) + '\n', '<stdin>', 'exec', dont_inherit=True)


def _prepare_wrapper(req, payload):
    """What _ansiballz_main does before the module starts; returns the shim's globals."""
    modlib_path = payload.root
    # 2.19 _wrapper.py L49-L55 / 2.18 template: make sure cwd is usable
    try:
        os.getcwd()
    except OSError:
        try:
            os.chdir(os.path.expanduser('~'))
        except OSError:
            os.chdir('/')
    # 2.19 _wrapper.py L57-L70: RLIMIT_NOFILE soft limit
    if req.get('rlimit_nofile'):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, req['rlimit_nofile'])
        if want != soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            except ValueError:
                pass
    # strip cwd from sys.path (scriptdir is None: the wrapper came on stdin), then the payload first
    sys.path = [p for p in sys.path if p not in ('', '.')]
    sys.path.insert(0, modlib_path)
    g = {
        '__name__': '__main__',
        'runpy': runpy,
        'sys': sys,
        '_fqn': req['module_fqn'],
        '_modlib': modlib_path,
        '_p': req['params'].encode('utf-8'),
        '_profile': req['profile'],
        '_ext': req.get('extensions') or {},
    }
    if req['dialect'] == 'v2':
        from ansible.module_utils._internal._ansiballz import _loader  # from the payload

        g['_loader'] = _loader
    else:
        from ansible.module_utils import basic  # from the payload

        basic._ANSIBLE_ARGS = g['_p']
    return g


def _prepare_fresh_process_view(req):
    """What a brand-new interpreter would see that the agent may have cached."""
    importlib.invalidate_caches()
    tempfile.tempdir = None  # re-derive from TMPDIR of this run's environment
    platform._uname_cache = None  # hostname may have changed (hostname module)
    if hasattr(platform, '_os_release_cache'):
        platform._os_release_cache = None
    for k, v in (req.get('env') or {}).items():
        os.environ[k] = v
    time.tzset()  # TZ may come from the task environment


def _finish_threads(before):
    # interpreter shutdown joins non-daemon threads before atexit callbacks run
    for t in threading.enumerate():
        if t not in before and t.is_alive() and not t.daemon and t is not threading.current_thread():
            t.join()


def execute(req, payload, out_fd, err_fd, template_out, template_err, state=None):
    """Run the module with fds 1/2 on out_fd/err_fd.  Returns the exit status.
    With ``state`` (in-process mode) everything is restored afterwards."""
    global _ACTIVE
    if state is not None:
        with _FORK_LOCK:
            state.save()
            _ACTIVE = state
    try:
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        run_env = dict(os.environ)
        run_env.update(req.get('env') or {})
        sys.stdin, sys.stdout, sys.stderr = _std_streams(template_out, template_err, run_env)
        sys.argv = ['']  # `python3` reading its program from stdin
        if req.get('executable'):  # another path of this interpreter (50_modules.py)
            sys.executable = req['executable']
        _prepare_fresh_process_view(req)
        if req.get('cwd'):  # the local connection's playbook directory
            os.chdir(req['cwd'])
        if _HOOK not in sys.path_hooks:
            sys.path_hooks.insert(0, _HOOK)
        _HOOK.payload = payload
        rc = 0
        before = set(threading.enumerate())
        with _AtExit() as ax:
            try:
                g = _prepare_wrapper(req, payload)
                exec(_shim(req), g)
            except SystemExit as e:
                rc = _exit_code(e)
            except BaseException:
                # uncaught: the interpreter prints the traceback with sys.excepthook, status 1
                etype, value, tb = sys.exc_info()
                tb = tb.tb_next or tb  # drop this frame: the traceback starts at "<stdin>"
                value.__traceback__ = tb
                rc = 1
                try:
                    sys.excepthook(
                        etype, value, tb
                    )  # e.g. 2.18 file.py routes AnsibleModuleError to fail_json
                except SystemExit as e:  # ... which exits from inside the hook: that status wins
                    rc = _exit_code(e)
                except BaseException:
                    traceback.print_exception(etype, value, tb)
            finally:
                _finish_threads(before)
                ax.run()
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:
                        pass
    finally:
        report = {}
        if state is not None:
            with _FORK_LOCK:
                report = state.restore()
                _ACTIVE = None
    _HOOK.payload = None
    return rc, report


# The in-process run under way (its saved state), for a run forked meanwhile to undo what that
# run changed in the process before it starts (cwd, environment, fds 1/2, sys.*, its modules).
# Saving, restoring and forking take the lock, so a child never sees a half-saved state.
_ACTIVE = None
_FORK_LOCK = threading.Lock()


def _capture_file():
    if hasattr(os, 'memfd_create'):
        return os.memfd_create('spindle-capture')
    fd, path = tempfile.mkstemp()
    os.unlink(path)
    return fd


def _read_all(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    return b''.join(chunks)


def _payload_on_disk(req, files):
    """A private directory holding the payload as the zip stock's AnsiballZ wrapper writes
    (``<tmp>/ansible_<module>_payload_<rand>/ansible_<module>_payload.zip``): for a module that
    may re-execute itself under another interpreter (``respawn_module``: apt, dnf, ...), which
    then imports the payload from that path. Returns (directory, zip path)."""
    import shutil
    import zipfile

    name = str(req.get('module_fqn') or 'module').rsplit('.', 1)[-1]
    name = ''.join(c if c.isalnum() or c == '_' else '_' for c in name)
    top = tempfile.mkdtemp(prefix='ansible_%s_payload_' % name)
    path = os.path.join(top, 'ansible_%s_payload.zip' % name)
    try:
        with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
            for rel in sorted(files):
                z.writestr(rel, files[rel])
    except BaseException:
        shutil.rmtree(top, ignore_errors=True)
        raise
    return top, path


def run(req, files, mode='inproc', template_out=None, template_err=None, core=(), disk=False, shas=None):
    """Run one module.  ``mode``: 'inproc' (in this process, state restored, every payload
    module unloaded), 'warm' (same, but ansible-core's own module_utils listed in ``core`` stay
    loaded between runs), or 'fork' (in a forked child). The caller serialises in-process
    runs; a fork may run alongside one: its child first restores the state that run saved.
    ``disk``: the module may re-execute itself (respawn): it runs forked with its payload in
    a private temp directory, as stock's wrapper has it, removed when it ends. ``shas``: the
    sha256 hex of each file, when the caller knows them."""
    template_out = template_out or sys.__stdout__
    template_err = template_err or sys.__stderr__
    payload = Payload(files, ROOT, shas)
    out_fd, err_fd = _capture_file(), _capture_file()
    t0 = time.perf_counter()
    top = None
    if disk:
        mode = 'fork'
        top, payload.root = _payload_on_disk(req, files)
    try:
        rc, report = _run_mode(
            req, payload, mode, out_fd, err_fd, template_out, template_err, core, fresh=disk
        )
    finally:
        if top is not None:
            import shutil

            shutil.rmtree(top, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    return {
        'rc': rc,
        'stdout': _read_all(out_fd),
        'stderr': _read_all(err_fd),
        'seconds': elapsed,
        'report': report,
    }


def _reset_imports_after_fork():
    """In a child forked while another thread imported something (an in-process module run):
    that thread does not exist here, but its per-module import locks stay taken and its
    half-executed modules stay in sys.modules. Forget both, so imports here start afresh
    (CPython keeps the locks in importlib._bootstrap; 3.8 to 3.13)."""
    try:
        import importlib._bootstrap as bootstrap

        bootstrap._module_locks.clear()
        blocking = getattr(bootstrap, '_blocking_on', None)
        if blocking is not None:
            blocking.clear()
    except (ImportError, AttributeError):
        pass
    for name, mod in list(sys.modules.items()):
        if getattr(getattr(mod, '__spec__', None), '_initializing', False):
            del sys.modules[name]


def _run_mode(req, payload, mode, out_fd, err_fd, template_out, template_err, core, fresh=False):
    if mode in ('inproc', 'warm'):
        if mode == 'warm':
            _validate_kept(payload)
        else:
            for n in list(_KEPT):
                sys.modules.pop(n, None)
            _KEPT.clear()
        rc, report = execute(
            req,
            payload,
            out_fd,
            err_fd,
            template_out,
            template_err,
            ProcessState(warm=(mode == 'warm'), core=frozenset(core)),
        )
    else:
        with _FORK_LOCK:
            active = _ACTIVE
            pid = os.fork()
        if pid == 0:  # child: never returns into the agent
            rc = 70
            try:
                os.setpgid(0, 0)
                _reset_imports_after_fork()
                if active is not None:
                    active.restore()  # the in-process run's changes, in this copy only
                if fresh:  # its payload is on disk: nothing kept from the virtual one
                    for n in list(_KEPT):
                        sys.modules.pop(n, None)
                    _KEPT.clear()
                else:
                    _validate_kept(payload)
                rc, _ = execute(req, payload, out_fd, err_fd, template_out, template_err)
            finally:
                os._exit(rc)
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status) if hasattr(os, 'waitstatus_to_exitcode') else (status >> 8)
        report = {}
    return rc, report
