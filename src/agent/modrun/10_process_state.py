# spindle module runner, 10_process_state: what an in-process run may change in the process, saved and restored
# One of the parts src/agent/modrun/*.py joined in name order into one source (one module,
# spindle_modrun) by transport::bootstrap; see 00_importer.py.

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
                'executable',
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
        left = [
            t
            for t in threading.enumerate()
            if t not in self.threads and t.is_alive() and not getattr(t, 'spindle_call', False)
        ]
        if left:
            report['threads_left'] = [t.name for t in left]
        return report

    def __init__(self, warm=False, core=()):
        self.uid, self.gid, self.euid = os.getuid(), os.getgid(), os.geteuid()
        self.warm, self.core = warm, core
