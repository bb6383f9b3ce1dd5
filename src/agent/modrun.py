"""Target side (agent) of the spindle module-execution prototype.  Standard library only, 3.8+.

Runs an Ansible new-style Python module *inside this process* (or in a forked child of
it), importing the module and its module_utils from an in-RAM dict ``path -> bytes``
(the unpacked AnsiballZ zip), and returns ``(rc, stdout bytes, stderr bytes)`` exactly as
``python3 <AnsiballZ wrapper>`` would have produced them.

Two wrapper dialects are emulated:

* ``v2`` (ansible-core 2.19, 2.20, 2.21): ``_ansiballz_main`` of
  ``ansible/_internal/_ansiballz/_wrapper.py``; the module is started with the payload's own
  ``ansible.module_utils._internal._ansiballz._loader.run_module`` (so ``basic._ANSIBLE_ARGS``,
  ``basic._ANSIBLE_PROFILE`` and the error handling are exactly the payload's).
* ``v1`` (ansible-core <= 2.18): ``ANSIBALLZ_TEMPLATE`` of ``executor/module_common.py``:
  ``basic._ANSIBLE_ARGS = params`` then ``runpy.run_module(..., alter_sys=True)``.
"""

import atexit
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import locale
import os
import platform
import resource
import runpy
import select
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings

# --------------------------------------------------------------------------- RAM importer

_CODE_CACHE = {}  # (sha256 of source, virtual filename) -> code object, for the agent's life
# One virtual (never created) "zip" path for every payload: same shape as stock's
# /tmp/ansible_<module>_payload_<random>/ansible_<module>_payload.zip, constant so that code
# objects (co_filename) are shared by all modules and kept modules' __path__ stay valid.
ROOT = os.path.join(tempfile.gettempdir(), 'ansible_spindle_payload_ram', 'ansible_spindle_payload.zip')


class Payload(object):
    """The files of one AnsiballZ zip, served from RAM under a virtual (non-existent) path."""

    def __init__(self, files, root, shas=None):
        self.files = files  # 'ansible/module_utils/basic.py' -> bytes
        self.root = root  # virtual "zip" path, like /tmp/ansible_x_payload_y/ansible_x_payload.zip
        # rel -> sha256 hex: the agent's manifest already names each file's (checked when the
        # blob was stored), so a warm run does not hash its kept module_utils again
        self.shas = dict(shas) if shas else {}

    def sha(self, rel):
        s = self.shas.get(rel)
        if s is None:
            s = self.shas[rel] = hashlib.sha256(self.files[rel]).hexdigest()
        return s


class _Loader(importlib.abc.InspectLoader):
    def __init__(self, payload, rel, is_pkg):
        self.payload, self.rel, self._is_pkg = payload, rel, is_pkg
        self.path = payload.root + '/' + rel

    # importlib protocol
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.get_code(module.__name__), module.__dict__)
        if module.__name__ == 'ansible.module_utils.basic':
            _memo_digests(module)

    # InspectLoader / ExecutionLoader (runpy uses get_code and get_filename)
    def get_code(self, fullname):
        key = (self.payload.sha(self.rel), self.path)
        code = _CODE_CACHE.get(key)
        if code is None:
            # zipimport compiles exactly like this (dont_inherit=True, no optimisation change)
            code = _CODE_CACHE[key] = compile(
                self.payload.files[self.rel], self.path, 'exec', dont_inherit=True
            )
        return code

    def get_source(self, fullname):
        return importlib.util.decode_source(self.payload.files[self.rel])

    def is_package(self, fullname):
        return self._is_pkg

    def get_filename(self, fullname):
        return self.path

    # ResourceLoader (pkgutil.get_data, linecache fallbacks)
    def get_data(self, path):
        prefix = self.payload.root + '/'
        if path.startswith(prefix) and path[len(prefix) :] in self.payload.files:
            return self.payload.files[path[len(prefix) :]]
        raise OSError(0, '', path)


#: The agent's memo of digests taken while puts were received (its DigestMemo, set when the
#: agent loads this runner), or None.
DIGESTS = None


def _memo_digests(basic):
    """AnsibleModule.digest_from_file answers from the agent's memo for a file a put wrote
    and nothing changed since (same inode, size, mtime and ctime): a copy's sha1 and md5 of
    the file it was sent are those of the bytes received, taken while they streamed, instead
    of two more reads of it after. Any other file is read as stock reads it."""
    cls = getattr(basic, 'AnsibleModule', None)
    orig = getattr(cls, 'digest_from_file', None)
    if orig is None or getattr(orig, '_spindle_memo', False):
        return

    def digest_from_file(self, filename, algorithm):
        memo = DIGESTS
        if memo is not None and isinstance(algorithm, str):
            hit = memo.lookup(filename, algorithm)
            if hit is not None:
                return hit
        return orig(self, filename, algorithm)

    digest_from_file._spindle_memo = True
    digest_from_file.__doc__ = orig.__doc__
    cls.digest_from_file = digest_from_file


class _PathEntryFinder(object):
    """What zipimport.zipimporter is for a real zip: a sys.path / __path__ entry finder."""

    def __init__(self, payload, path):
        self.payload = payload
        self.prefix = path[len(payload.root) :].strip('/')

    def find_spec(self, fullname, target=None):
        tail = fullname.rpartition('.')[2]
        base = (self.prefix + '/' + tail) if self.prefix else tail
        files = self.payload.files
        if base + '/__init__.py' in files:
            rel, pkg = base + '/__init__.py', True
        elif base + '.py' in files:
            rel, pkg = base + '.py', False
        else:
            return None
        loader = _Loader(self.payload, rel, pkg)
        return importlib.util.spec_from_file_location(
            fullname,
            loader.path,
            loader=loader,
            submodule_search_locations=[self.payload.root + '/' + base] if pkg else None,
        )

    def invalidate_caches(self):
        pass


class _PathHook(object):
    """Installed once in sys.path_hooks; serves whatever payload is current."""

    payload = None

    def __call__(self, path):
        p = self.payload
        if p is not None and (path == p.root or path.startswith(p.root + '/')):
            return _PathEntryFinder(p, path)
        raise ImportError('not a spindle payload path')


_HOOK = _PathHook()


_KEPT = {}  # warm mode: module name -> (path in payload, sha256) of core module_utils kept loaded
# Nothing may be singled out for unloading: a kept module holds references (module objects,
# functions from `from x import f`) into what it imported, so the kept set must be closed under
# imports.  Warm mode therefore keeps *all* of ansible-core's own module_utils and resets the
# per-run state known to live in them (list below, checked against 2.18-2.21).
_WARM_DENY = ()


# the two package inits recursive_finder synthesizes (they carry the controller's __version__)
_SYNTHETIC_PKGS = ('ansible/__init__.py', 'ansible/module_utils/__init__.py')


def _reset_kept_globals():
    m = sys.modules.get('ansible.module_utils.basic')
    if m is not None:
        for name in ('_ANSIBLE_ARGS', '_ANSIBLE_PROFILE', '_PARSED_MODULE_ARGS'):
            if hasattr(m, name):
                setattr(m, name, None)
    m = sys.modules.get('ansible.module_utils.facts.timeout')
    if m is not None:
        m.GATHER_TIMEOUT = None  # setup sets it; other fact users expect the default
    m = sys.modules.get('ansible.module_utils.distro._distro')
    if m is not None:
        m._distro = m.LinuxDistribution()  # cached /etc/os-release, lsb_release output
    m = sys.modules.get('ansible.module_utils.common.warnings')
    if m is not None:
        for name in ('_global_warnings', '_global_deprecations'):
            getattr(m, name).clear()  # dict in 2.19+, list in 2.18
    m = sys.modules.get('ansible.module_utils._internal._traceback')
    if m is not None and hasattr(m, '_module_tracebacks_enabled_events'):
        m._module_tracebacks_enabled_events = None


def _validate_kept(payload):
    for rel, sha in list(_KEPT.values()):
        if rel not in payload.files or payload.sha(rel) != sha:
            for n in list(_KEPT):
                sys.modules.pop(n, None)
            _KEPT.clear()
            return


def _payload_module_names():
    return [
        n
        for n in list(sys.modules)
        if n == 'ansible'
        or n.startswith('ansible.')
        or n == 'ansible_collections'
        or n.startswith('ansible_collections.')
    ]


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


def _shim(req):
    """Code standing in for the wrapper frames, compiled as "<stdin>" with the wrapper's own
    line numbers so that an uncaught exception prints exactly the stock traceback:
      File "<stdin>", line <module>, in <module>
      File "<stdin>", line <main>, in _ansiballz_main
      File "<stdin>", line <invoke>, in invoke_module"""
    if req['dialect'] == 'v2':
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
    ln = req.get('tb_lines') or {'invoke': 3, 'main': 4, 'module': 5}
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


_SIGNALS = [s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]


class ProcessState(object):
    """Everything a module run may change in this process, saved and restored."""

    def save(self):
        self.environ = dict(os.environ)
        # The cwd may be out of reach for this user (a become context started in the login
        # user's private home): then only its path is kept, and restoring it is best effort,
        # as a module that finds it unusable moves elsewhere on its own (AnsibleModule).
        try:
            self.cwd_fd = os.open('.', getattr(os, 'O_PATH', os.O_RDONLY) | os.O_DIRECTORY)
        except OSError:
            self.cwd_fd = None
        try:
            self.cwd_path = os.getcwd()
        except OSError:
            self.cwd_path = None
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        self.locale = locale.setlocale(locale.LC_ALL)
        self.rlimit = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.sys_attrs = dict(
            (k, getattr(sys, k))
            for k in (
                'argv',
                'path',
                'meta_path',
                'path_hooks',
                'stdin',
                'stdout',
                'stderr',
                'excepthook',
                'displayhook',
            )
        )
        self.sys_lists = (list(sys.argv), list(sys.path), list(sys.meta_path), list(sys.path_hooks))
        self.recursion = sys.getrecursionlimit()
        self.signals = dict((s, signal.getsignal(s)) for s in _SIGNALS)
        self.warn_filters = list(warnings.filters)
        self.showwarning = warnings.showwarning
        self.tempdir = tempfile.tempdir
        self.threads = set(threading.enumerate())
        self.modules = set(sys.modules) - set(_KEPT)
        self.fds = dict((fd, os.dup(fd)) for fd in (0, 1, 2))
        import socket

        self.sock_timeout = socket.getdefaulttimeout()
        # module_utils/urls.py open_url() calls urllib.request.install_opener(): process-global
        self.url_opener = getattr(sys.modules.get('urllib.request'), '_opener', None)

    def restore(self):
        report = {}
        import socket

        socket.setdefaulttimeout(self.sock_timeout)
        if 'urllib.request' in sys.modules:
            sys.modules['urllib.request']._opener = self.url_opener
        for fd, saved in self.fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        added_finders = [f for f in sys.meta_path if f not in self.sys_lists[2]]  # e.g. six's importer
        for k, v in self.sys_attrs.items():
            setattr(sys, k, v)
        sys.argv[:], sys.path[:], sys.meta_path[:], sys.path_hooks[:] = self.sys_lists
        for key in [
            k
            for k in sys.path_importer_cache
            if isinstance(k, str) and _HOOK.payload and k.startswith(_HOOK.payload.root)
        ]:
            del sys.path_importer_cache[key]
        sys.setrecursionlimit(self.recursion)
        changed = [s for s in _SIGNALS if signal.getsignal(s) is not self.signals[s]]
        for s in changed:
            try:
                signal.signal(s, self.signals[s])
            except (OSError, ValueError, TypeError):
                pass
        if signal.getitimer(signal.ITIMER_REAL)[0]:
            signal.setitimer(signal.ITIMER_REAL, 0)
            changed.append('itimer')
        if changed:
            report['signals'] = [str(s) for s in changed]
        warnings.filters[:] = self.warn_filters
        warnings.showwarning = self.showwarning
        warnings._filters_mutated()
        tempfile.tempdir = self.tempdir
        if os.getuid() != self.uid or os.getgid() != self.gid or os.geteuid() != self.euid:
            report['identity'] = 'changed'  # cannot be undone: the caller must retire this process
        if self.cwd_fd is not None:
            os.fchdir(self.cwd_fd)
            os.close(self.cwd_fd)
        elif self.cwd_path is not None:
            try:
                os.chdir(self.cwd_path)
            except OSError:
                pass
        os.umask(self.umask)
        if os.environ != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        time.tzset()
        try:
            locale.setlocale(locale.LC_ALL, self.locale)
        except locale.Error:
            pass
        resource.setrlimit(resource.RLIMIT_NOFILE, self.rlimit)
        # drop every module the payload brought (and any ansible* module found elsewhere),
        # except, in warm mode, ansible-core's own module_utils (identical bytes on the controller)
        for name in _payload_module_names():
            mod = sys.modules[name]
            loader = getattr(getattr(mod, '__spec__', None), 'loader', None)
            if (
                self.warm
                and isinstance(loader, _Loader)
                and not name.startswith(_WARM_DENY)
                and (loader.rel in self.core or loader.rel in _SYNTHETIC_PKGS)
            ):
                _KEPT[name] = (loader.rel, loader.payload.sha(loader.rel))
                continue
            _KEPT.pop(name, None)
            del sys.modules[name]
            parent, _, child = name.rpartition('.')
            if parent in _KEPT and getattr(sys.modules.get(parent), child, None) is mod:
                delattr(sys.modules[parent], child)  # else `from parent import child` finds the stale one
        _reset_kept_globals()
        # a kept module's meta-path importer (ansible.module_utils.six adds one) must stay with it
        sys.meta_path.extend(f for f in added_finders if type(f).__module__ in _KEPT)
        new = set(sys.modules) - self.modules - set(_KEPT)
        if new:
            report['new_modules'] = sorted(new)  # stdlib / third-party modules the run imported; kept
        left = [t for t in threading.enumerate() if t not in self.threads and t.is_alive()]
        if left:
            report['threads_left'] = [t.name for t in left]
        return report

    def __init__(self, warm=False, core=()):
        self.uid, self.gid, self.euid = os.getuid(), os.getgid(), os.geteuid()
        self.warm, self.core = warm, core


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


# --------------------------------------------------------------------------- async tasks

# An async task (`async: N`) runs as Ansible's async_wrapper (modules/async_wrapper.py, 2.18 to
# 2.21) runs it, minus the files: the job's status file is written where and as async_wrapper
# writes it (`<ANSIBLE_ASYNC_DIR>/<jid>`, first {"started", "finished", "ansible_job_id"}, then
# the module's result, each by a rename), in a detached process (own session, umask 022) that
# outlives the call, the agent and the connection, under a watcher that kills the module's
# process group at async_wrapper's check points and records "Timeout exceeded". Ansible's own
# async_status module (a normal module: it runs in the agent) reads it, in this run or a later.

#: Seconds the start waits for the job's first status file (async_wrapper: 25 x 0.1 s).
ASYNC_START_WAIT = 2.5
#: async_wrapper's watcher checks every 5 s (every limit/2 s for a limit up to 5 s).
ASYNC_STEP = 5.0


def filter_non_json_lines(data, blank_junk=True):
    """async_wrapper's ``_filter_non_json_lines`` (a copy of module_utils/json_utils.py):
    ``(json text, warnings)``; ValueError when there is no JSON object. ``blank_junk``: whether
    trailing blank lines count as junk (2.18-2.20 yes; 2.21 only lines with text)."""
    warnings_ = []
    lines = data.splitlines()
    for start, line in enumerate(lines):  # noqa: B007 (used after the loop, as in Ansible)
        line = line.strip()
        if line.startswith('{'):
            break
    else:
        raise ValueError('No start of json char found')
    lines = lines[start:]
    for reverse_end_offset, line in enumerate(reversed(lines)):  # noqa: B007 (used after)
        if line.strip().endswith('}'):
            break
    else:
        raise ValueError('No end of json char found')
    if reverse_end_offset > 0:
        trailing_junk = lines[len(lines) - reverse_end_offset :]
        if blank_junk or any(j.strip() for j in trailing_junk):
            warnings_.append('Module invocation had junk after the JSON data: %s' % '\n'.join(trailing_junk))
    lines = lines[: (len(lines) - reverse_end_offset)]
    return ('\n'.join(lines), warnings_)


def job_write(path, info):
    """async_wrapper's ``jwrite``: the status file replaced whole (written beside, renamed)."""
    tmp = path + '.tmp'
    f = open(tmp, 'w')
    try:
        f.write(json.dumps(info))
    finally:
        f.close()
        os.rename(tmp, path)


def _module_text(data):
    # async_wrapper reads the module's output with subprocess' text mode: UTF-8 with
    # surrogateescape, universal newlines
    return data.decode('utf-8', 'surrogateescape').replace('\r\n', '\n').replace('\r', '\n')


def job_result(outdata, stderr, jid, cmd, ints=False, blank_junk=True):
    """The final status-file content for a module that printed ``outdata``/``stderr`` (text),
    exactly as async_wrapper's ``_run_module`` builds it."""
    failed = 1 if ints else True
    try:
        filtered, json_warnings = filter_non_json_lines(outdata, blank_junk)
        result = json.loads(filtered)
        if json_warnings:
            module_warnings = result.get('warnings', [])
            if not isinstance(module_warnings, list):
                module_warnings = [module_warnings]
            module_warnings.extend(json_warnings)
            result['warnings'] = module_warnings
        if stderr:
            result['stderr'] = stderr
        return result
    except OSError as e:
        result = {"failed": failed, "cmd": cmd, "msg": str(e), "outdata": outdata, "stderr": stderr}
    except Exception:
        result = {
            "failed": failed,
            "cmd": cmd,
            "data": outdata,
            "stderr": stderr,
            "msg": traceback.format_exc(),
        }
    result['ansible_job_id'] = jid
    return result


def _notice(fd, msg):
    try:
        os.write(fd, json.dumps(msg).encode('utf-8') + b'\n')
    except OSError:
        pass  # the starter gave up waiting: the job runs on


def _close_fds(keep):
    """Close every descriptor above 2 but ``keep``: a detached job must not hold the agent's
    channel (the ssh session would wait for it) nor anything else of the agent's."""
    try:
        fds = [int(n) for n in os.listdir('/proc/self/fd')]
    except (OSError, ValueError):
        fds = range(3, min(os.sysconf('SC_OPEN_MAX'), 65536))
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _wait_child(pid, seconds):
    """Whether child ``pid`` ended (reaped) within ``seconds`` (with SIGCHLD blocked)."""
    deadline = time.monotonic() + seconds
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if hasattr(signal, 'sigtimedwait'):
            signal.sigtimedwait([signal.SIGCHLD], left)
        else:
            time.sleep(min(left, 0.1))


def watch_job(pid, limit, path, step=ASYNC_STEP, grace=1.0):
    """async_wrapper's watcher: checks at each ``step`` (limit/2 when ``step`` >= limit); at the
    first check at or past ``limit`` with the module still running, kills its process group,
    waits ``grace`` and records the timeout. Returns True when it killed the job."""
    # SIGCHLD blocked: it stays pending for sigtimedwait (a check of the child comes first)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    try:
        return _watch(pid, limit, path, step, grace)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _watch(pid, limit, path, step, grace):
    remaining = limit
    if remaining != 0 and step >= remaining:
        step = remaining / 2.0
    if _wait_child(pid, step):
        return False
    while True:
        remaining -= step
        if remaining <= 0:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            time.sleep(grace)
            job_write(path, {'msg': 'Timeout exceeded', 'failed': True, 'child_pid': pid})
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
            return True
        if _wait_child(pid, step):
            return False


def _async_module(req, files, job, jid, path, wfd, template_out, template_err, disk):
    """The job's module process: first status, the start notice, the module, its result."""
    ints = job.get('ints')
    job_write(path, {"started": 1 if ints else True, "finished": 0 if ints else False, "ansible_job_id": jid})
    _notice(wfd, {'started': True})
    os.close(wfd)
    payload = Payload(files, ROOT)
    top = None
    if disk:  # may re-execute itself: its payload on disk, as stock's wrapper has it
        for n in list(_KEPT):
            sys.modules.pop(n, None)
        _KEPT.clear()
        top, payload.root = _payload_on_disk(req, files)
    else:
        _validate_kept(payload)
    name = str(req.get('module_fqn') or 'module').rsplit('.', 1)[-1]
    cmd = 'AnsiballZ_%s.py' % name  # stock names the module file it ran (a temp path)
    out_fd, err_fd = _capture_file(), _capture_file()
    try:
        execute(req, payload, out_fd, err_fd, template_out, template_err)
    finally:
        if top is not None:
            import shutil

            shutil.rmtree(top, ignore_errors=True)
    # from here on, what async_wrapper does in its own process once the module exited
    for fd in (0, 1, 2):
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)
    os.umask(0o022)
    outdata, stderr = _module_text(_read_all(out_fd)), _module_text(_read_all(err_fd))
    job_write(path, job_result(outdata, stderr, jid, cmd, ints, job.get('blank_junk', True)))


def _async_child(req, files, job, wfd, active, template_out, template_err, disk):
    """In the first child (async_wrapper's own process): the job id, the status directory,
    then a new session and the watcher, which starts the module process."""
    _reset_imports_after_fork()
    if active is not None:
        active.restore()  # an in-process run's changes, in this copy only
    for k, v in (req.get('env') or {}).items():  # async_wrapper runs with the task's environment
        os.environ[k] = v
    if req.get('cwd'):
        os.chdir(req['cwd'])
    jid = '%s.%d' % (job['jid'], os.getpid())
    jobdir = os.path.expanduser(os.environ.get('ANSIBLE_ASYNC_DIR', '~/.ansible_async'))
    job_path = os.path.join(jobdir, jid)
    try:
        os.makedirs(jobdir, exist_ok=True)
    except Exception as e:
        _notice(
            wfd,
            {
                'error': {
                    "failed": 1 if job.get('ints') else True,
                    "msg": "could not create directory: %s - %s" % (jobdir, e),
                    "exception": traceback.format_exc(),
                }
            },
        )
        return
    try:
        path = os.path.join(os.getcwd(), job_path)  # the module may change directory
    except OSError:
        path = job_path
    _notice(wfd, {'jid': jid, 'results_file': job_path})
    os.setsid()
    os.umask(0o022)
    if os.fork():
        return  # (this process exits: the watcher is an orphan in its own session)
    _close_fds((wfd,))
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        _async_module(req, files, job, jid, path, wfd, template_out, template_err, disk)
        return
    os.close(wfd)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    watch_job(pid, job['limit'], path)


def _read_notices(fd, deadline):
    info = {}
    buf = b''
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return info
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return info
        chunk = os.read(fd, 65536)
        if not chunk:
            return info
        buf += chunk
        while b'\n' in buf:
            line, buf = buf.split(b'\n', 1)
            msg = json.loads(line.decode('utf-8'))
            info.update(msg)
            if 'error' in msg or 'started' in msg:
                return info


def start_async(req, files, job, template_out=None, template_err=None, disk=False):
    """Start the module as an async job (``job``: ``jid`` prefix, ``limit`` seconds, ``ints``
    for 2.18's 1/0 flags, ``blank_junk``) and return at once, as async_wrapper does, with
    ``rc``/``stdout``/``stderr`` of async_wrapper's own output (the job id and status file)."""
    template_out = template_out or sys.__stdout__
    template_err = template_err or sys.__stderr__
    t0 = time.perf_counter()
    rfd, wfd = os.pipe()
    with _FORK_LOCK:
        active = _ACTIVE
        pid = os.fork()
    if pid == 0:  # child: never returns into the agent
        try:
            os.close(rfd)
            _async_child(req, files, job, wfd, active, template_out, template_err, disk)
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        info = _read_notices(rfd, time.monotonic() + ASYNC_START_WAIT)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)  # the first child ends as soon as the watcher is forked
    ints = job.get('ints')
    if 'error' in info:
        rc, out = 1, info['error']
    elif 'results_file' in info:
        rc, out = (
            0,
            {
                "failed": 0 if ints else False,
                "started": 1 if ints else True,
                "finished": 0 if ints else False,
                "ansible_job_id": info['jid'],
                "results_file": info['results_file'],
                "_ansible_suppress_tmpdir_delete": True,
            },
        )
    else:
        rc, out = (
            1,
            {
                "failed": 1 if ints else True,
                "msg": "FATAL ERROR: the async job did not start (process %d)" % pid,
            },
        )
    return {
        'rc': rc,
        'stdout': (json.dumps(out) + '\n').encode('utf-8'),
        'stderr': b'',
        'seconds': time.perf_counter() - t0,
        'report': {},
    }
