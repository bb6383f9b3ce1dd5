"""Every patch spindle makes to ansible-core's internals, in one place.

Each patch names what it changes, the ansible-core versions it was verified on
(:data:`VERIFIED`, by ``make test-matrix`` and the main venv's conformance run) and the shape
it relies on (attributes and signatures, checked before it is applied):

``loader-routing``
    ``connection_loader.get_with_context`` / ``get`` answer the ``spindle`` connection for
    ssh, smart, local, docker, podman and the enter plugins; ``action_loader.get`` hands the
    copy and template actions the one-round-trip path (see ``copy-fast-path``). Undone when
    the play ends (:class:`LoaderPatch`).
``copy-fast-path``
    The builtin copy and template actions of a spindle connection get a subclass whose
    ``_early_needs_tmp_path`` is false and whose ``_copy_file`` (copy) tries
    :func:`spindle_ansible.copyfast.fast_copy_file` first (:func:`route_action`).
``async-execute-module``
    The action of an async task (and gather_facts, which starts parallel async jobs itself)
    with a spindle connection gets a subclass whose ``_execute_module`` runs Ansible's own with
    ``wrap_async=False`` while the connection starts the module as a detached job in the agent
    (:mod:`spindle_ansible.asyncrun` holds the per-task decisions: a version outside
    ``asyncrun.VERIFIED`` or a module the agent does not run takes async_wrapper, with the
    reason) (:func:`route_async`).
``file-module``
    Every action with a spindle connection gets a subclass whose ``_execute_module`` marks
    the run, whose ``_configure_module`` notes an old-style, WANT_JSON or binary module (the
    styles Ansible runs from files), and whose ``_make_tmp_path``, for such a module, makes no
    remote temp dir but hands Ansible a placeholder path: Ansible's own transfers (module,
    args file), chmod and command then reach the connection, which runs them as one agent
    call (the agent makes the private dir, writes the files, runs the command, removes the
    dir: :mod:`spindle_ansible.filemod`) (:func:`route_file_module`).
``module-token``
    ansible-core 2.19+ builds a module's AnsiballZ zip once per run and then, for every task,
    loads it from its cache (``module_common._CachedModule.load``) and writes it, base64 (some
    580 KB for ``command``), into the task's wrapper, which spindle's plan then scans again.
    While an action of a spindle connection builds a module it will pipeline (inside
    ``_execute_module``, not async, files not kept), ``load`` hands ``modify_module`` a short
    token in place of the zip and keeps the zip in this worker (:func:`token_zip`): the wrapper
    is ~5 KB, everything else in it is Ansible's own. The plan reads the zip by its token; a
    command that goes anywhere but the agent gets the wrapper with the zip put back first
    (:func:`expand_token`, byte for byte what Ansible would have built). 2.18 has no such
    cache object: there the patch is not applied, silently (:func:`install_module_token`).
``strategy-queue-task``
    The ``spindle_linear`` and ``spindle_free`` strategies extend ``StrategyBase._queue_task``
    (called in the controller for each host and task, before the worker forks) to do what
    the ``spindle`` callback does from its task events: note the host's first task that
    reaches it (:mod:`spindle_ansible.opening`) and preload the run's plan cache
    (:func:`strategy_queued`).
``become-wrap``
    A become plugin's ``build_become_command`` is wrapped (per instance) to remember each
    command it wraps, so the connection runs the unwrapped command in a nested agent that
    already runs as the become user (:func:`wrap_become`).
``depfinder-cache``
    ``module_common.ModuleDepFinder`` (the walk of a module or module_utils file for its
    imports, when Ansible builds a module's AnsiballZ payload) answers from a per-file cache
    kept across runs, and before 2.21 (where ``recursive_finder`` parses the file itself)
    ``module_common``'s ``compile`` of a known file into a syntax tree returns an empty tree;
    ``recursive_finder`` writes new entries when it returns. The payload is byte for byte
    Ansible's (:mod:`spindle_ansible.depcache`, :func:`install_depcache`).
``result-wake``
    ``StrategyBase._wait_on_pending_results`` (the controller's wait for its workers'
    results) waits on the strategy's result condition, which the results thread's append now
    notifies, instead of sleeping ``internal_poll_interval`` between polls: Ansible's own loop
    otherwise (:mod:`spindle_ansible.resultwake`, :func:`install_result_wake`). For the whole
    controller process once a spindle play starts, whatever a play's connection.
``worker-gc``
    Not a patch of ansible-core but of the controller process it runs in: each process forked
    from it (Ansible's worker per task, ``multiprocessing`` with the ``fork`` context on every
    version in :data:`VERIFIED`) starts with ``gc.freeze()``, so the worker's garbage collector
    walks only what the worker allocates, not every object it inherited from the controller.
    Measured with an ad hoc sitecustomize (not shipped: an indication) timing
    ``ActionBase._configure_module`` in the first worker of a run, six cold one-ping runs
    each: 150-226 ms of CPU without, 107-132 ms with; stock Ansible's 115-172 ms.
    The frozen objects are still freed by reference counting; a worker lives for one task
    (:func:`install_worker_gc`).

On a version outside :data:`VERIFIED` whose shapes match, a patch is applied with one warning
("not verified on X.Y"); when a shape does not match, the patch is not applied and Ansible's
own behaviour stays (the stock connection, the stock copy action, the stock become wrapping),
with one warning naming the patch and what is missing. Nothing else in the plugin reaches into
Ansible's internals.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import inspect
import os
import re
import secrets

from ansible.utils.display import Display

display = Display()

#: ansible-core minor versions every patch here was verified on.
VERIFIED = ('2.18', '2.19', '2.20', '2.21')

_checked = {}  # patch name -> applies (bool), decided once per process


def core_version():
    """The running ansible-core's ``major.minor``."""
    from ansible.release import __version__

    return '.'.join(__version__.split('.')[:2])


def _params(func):
    try:
        return list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None


def _source(func):
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        return ''


def _shape(name):
    """What patch ``name`` relies on that this ansible-core lacks (empty: all there)."""
    missing = []
    if name == 'loader-routing':
        from ansible.plugins.loader import action_loader, connection_loader

        for attr in ('get', 'get_with_context', 'add_directory'):
            if not callable(getattr(connection_loader, attr, None)):
                missing.append('connection_loader.%s' % attr)
        if not callable(getattr(action_loader, 'get', None)):
            missing.append('action_loader.get')
    elif name == 'copy-fast-path':
        from ansible.plugins.action import ActionBase
        from ansible.plugins.action.copy import ActionModule as Copy

        want = [
            'self',
            'source_full',
            'source_rel',
            'content',
            'content_tempfile',
            'dest',
            'task_vars',
            'follow',
        ]
        if _params(getattr(Copy, '_copy_file', None)) != want:
            missing.append('copy ActionModule._copy_file%s' % ('(' + ', '.join(want[1:]) + ')'))
        for attr in ('_early_needs_tmp_path', '_execute_module', '_make_tmp_path'):
            if not callable(getattr(ActionBase, attr, None)):
                missing.append('ActionBase.%s' % attr)
    elif name == 'async-execute-module':
        from ansible.plugins.action import ActionBase

        if 'wrap_async' not in (_params(getattr(ActionBase, '_execute_module', None)) or []):
            missing.append('ActionBase._execute_module(..., wrap_async)')
    elif name == 'file-module':
        from ansible.plugins.action import ActionBase

        for attr, want in (
            ('_execute_module', None),
            ('_configure_module', ['self', 'module_name', 'module_args', 'task_vars']),
            ('_make_tmp_path', ['self', 'remote_user']),
            ('_is_become_unprivileged', ['self']),
            ('get_shell_option', ['self', 'option', 'default']),
        ):
            params = _params(getattr(ActionBase, attr, None))
            if params is None or (want is not None and params != want):
                missing.append('ActionBase.%s(%s)' % (attr, ', '.join((want or ['...'])[1:])))
        if 'wrap_async' not in (_params(getattr(ActionBase, '_execute_module', None)) or []):
            missing.append('ActionBase._execute_module(..., wrap_async)')
        from ansible.plugins.shell import ShellBase

        if not callable(getattr(ShellBase, '_generate_temp_dir_name', None)):
            missing.append('ShellBase._generate_temp_dir_name()')
    elif name == 'module-token':
        from ansible.executor import module_common
        from ansible.plugins.action import ActionBase

        cached = getattr(module_common, '_CachedModule', None)
        fields = [f.name for f in dataclasses.fields(cached)] if dataclasses.is_dataclass(cached) else []
        if 'zip_data' not in fields or not callable(getattr(cached, 'load', None)):
            missing.append('module_common._CachedModule(zip_data=...).load(path)')
        if _params(getattr(ActionBase, '_is_pipelining_enabled', None)) != [
            'self',
            'module_style',
            'wrap_async',
        ]:
            missing.append('ActionBase._is_pipelining_enabled(module_style, wrap_async)')
    elif name == 'strategy-queue-task':
        from ansible.plugins.strategy import StrategyBase

        want = ['self', 'host', 'task', 'task_vars', 'play_context']
        if _params(getattr(StrategyBase, '_queue_task', None)) != want:
            missing.append('StrategyBase._queue_task(%s)' % ', '.join(want[1:]))
    elif name == 'depfinder-cache':
        from ansible.executor import module_common

        finder = getattr(module_common, 'ModuleDepFinder', None)
        params = _params(getattr(finder, '__init__', None)) or []
        if params[:4] not in (
            ['self', 'module_fqn', 'tree', 'is_pkg_init'],
            ['self', 'module_fqn', 'module_data', 'is_pkg_init'],
        ):
            missing.append('module_common.ModuleDepFinder(module_fqn, tree|module_data, is_pkg_init)')
        source = _source(getattr(module_common, 'recursive_finder', None))
        used = set(re.findall(r'\bfinder\.(\w+)', source))
        if 'ModuleDepFinder(' not in source or not used or not used <= _FINDER_READS:
            missing.append(
                'recursive_finder reading only %s of its finders' % ', '.join(sorted(_FINDER_READS))
            )
    elif name == 'result-wake':
        from ansible.plugins import strategy

        from spindle_ansible import resultwake

        base = strategy.StrategyBase
        if resultwake.normal(_source(getattr(base, '_wait_on_pending_results', None))) != resultwake.normal(
            resultwake.ANSIBLE_LOOP
        ):
            missing.append('StrategyBase._wait_on_pending_results as in 2.18-2.21')
        if 'self._results_lock = threading.Condition(' not in _source(base.__init__):
            missing.append('StrategyBase._results_lock, a threading.Condition')
        if not re.search(
            r'with strategy\._results_lock:\s+strategy\._results\.append\(',
            _source(getattr(strategy, 'results_thread_main', None)),
        ):
            missing.append('results_thread_main appending under strategy._results_lock')
    elif name == 'become-wrap':
        from ansible.plugins.become import BecomeBase

        if _params(getattr(BecomeBase, 'build_become_command', None)) != ['self', 'cmd', 'shell']:
            missing.append('BecomeBase.build_become_command(cmd, shell)')
    else:
        raise ValueError('unknown patch %r' % name)
    return missing


#: Every patch this module applies (each named in its section below).
PATCHES = (
    'loader-routing',
    'copy-fast-path',
    'become-wrap',
    'async-execute-module',
    'file-module',
    'module-token',
    'strategy-queue-task',
    'depfinder-cache',
    'result-wake',
)


def prime():
    """Decide every patch in the controller process, before Ansible forks a worker per task:
    the workers inherit the answers (no signature inspection per task, ~0.5 ms) and a
    version warning is said once per run, not once per task."""
    for name in PATCHES:
        if name not in ('module-token', 'depfinder-cache'):
            applies(name)
    install_module_token()
    install_depcache()
    install_worker_gc()
    install_result_wake()


# -- strategy-queue-task ------------------------------------------------------------------------


def strategy_queued(host, task):
    """A spindle strategy queues ``task`` for ``host`` (module doc, ``strategy-queue-task``)."""
    if not applies('strategy-queue-task'):
        return
    from spindle_ansible import depcache, opening, plancache

    opening.started(host.get_name(), getattr(task, 'action', None), getattr(task, '_uuid', None))
    plancache.run_cache().preload()
    depcache.refresh()


# -- depfinder-cache ----------------------------------------------------------------------------

#: What ``recursive_finder`` may read of a finder for the cache's answer to stand in for it.
_FINDER_READS = {'submodules', 'optional_imports', 'embeds', 'tree'}
_DEPCACHE = {'installed': False}


def install_depcache():
    """Route ``module_common``'s dependency finder through :mod:`spindle_ansible.depcache`
    (module doc, ``depfinder-cache``). Once per process, in the controller: workers inherit it
    and the entries loaded here."""
    if _DEPCACHE['installed'] or not applies('depfinder-cache'):
        return
    import builtins

    from ansible.errors import AnsibleError
    from ansible.executor import module_common

    from spindle_ansible import daemon, depcache

    try:
        directory = daemon.kept_dir()
    except AnsibleError as e:
        directory = None
        display.vvv('spindle: the module dependency cache is not kept across runs: %s' % e)
    why = depcache.load(directory, core_version())
    if why:
        display.vvv('spindle: module dependency cache: %s' % why)
        if why.startswith('off'):
            return
    finder = module_common.ModuleDepFinder
    takes_source = _params(finder.__init__)[2] == 'module_data'
    finder.__init__ = depcache.finder_init(finder.__init__, takes_source)
    if not takes_source:
        module_common.compile = depcache.caching_compile(builtins.compile)
    module_common.recursive_finder = depcache.flushing(module_common.recursive_finder)
    _DEPCACHE['installed'] = True


# -- result-wake ------------------------------------------------------------------------------


def install_result_wake():
    """The controller waits for its workers' results on a condition (module doc,
    ``result-wake``). Once per process."""
    if not applies('result-wake'):
        return
    from ansible.plugins.strategy import StrategyBase

    from spindle_ansible import resultwake

    StrategyBase._wait_on_pending_results = resultwake.wait_on_pending_results


# -- worker-gc ----------------------------------------------------------------------------------

_WORKER_GC = {'installed': False}


def install_worker_gc():
    """Freeze, in every process forked from this one from now on, the objects it inherits (module
    doc, ``worker-gc``). Once per process: an at-fork hook cannot be removed, and a second would
    only freeze again."""
    if _WORKER_GC['installed']:
        return
    os.register_at_fork(after_in_child=gc.freeze)
    _WORKER_GC['installed'] = True


def applies(name):
    """Whether patch ``name`` is applied here (decided, and warned about, once)."""
    if name in _checked:
        return _checked[name]
    version = core_version()
    missing = _shape(name)
    if missing:
        display.warning(
            "spindle: ansible-core %s lacks what spindle's %s patch relies on (%s): "
            "it is not applied, Ansible's own behaviour stays" % (version, name, ', '.join(missing))
        )
        ok = False
    else:
        if version not in VERIFIED:
            display.warning(
                "spindle: the %s patch was verified on ansible-core %s, not %s; the "
                "shapes it relies on match, so it is applied" % (name, ', '.join(VERIFIED), version)
            )
        ok = True
    _checked[name] = ok
    return ok


# -- loader-routing -----------------------------------------------------------------------------


def _route(loader_get_with_context, routes, connection_name, connection_dir, unrouted=None):
    from ansible.errors import AnsibleError

    def get_with_context(name, *args, **kwargs):
        transport = routes.get(name)
        if transport is None:
            if unrouted is not None and name != connection_name and not kwargs.get('class_only'):
                unrouted(name, args)
            return loader_get_with_context(name, *args, **kwargs)
        result = loader_get_with_context(connection_name, *args, **kwargs)
        obj = result[0]
        if obj is None:
            raise AnsibleError(
                "spindle: the connection plugin %r was not found (looked in %s)"
                % (connection_name, connection_dir)
            )
        if not kwargs.get('class_only') and hasattr(obj, 'spindle_route'):
            obj.spindle_route(transport)
        return result

    get_with_context.spindle_routed = True
    return get_with_context


def _routed_get(routed_get_with_context):
    def get(name, *args, **kwargs):
        return routed_get_with_context(name, *args, **kwargs)[0]

    get.spindle_routed = True
    return get


def _routed_action_get(action_get):
    def get(name, *args, **kwargs):
        obj = action_get(name, *args, **kwargs)
        if kwargs.get('class_only'):
            return obj
        connection = kwargs.get('connection')
        obj = route_file_module(route_action(name, obj, connection), connection)
        return route_async(obj, connection)

    get.spindle_routed = True
    return get


class LoaderPatch(object):
    """Routes ``routes`` (requested connection name -> spindle transport) to the connection
    ``connection_name`` found in ``connection_dir`` on ``loader`` (and gives the copy action
    spindle's one-round-trip ``_copy_file`` on ``actions``) until ``restore()``."""

    def __init__(self, loader, actions, routes, connection_name, connection_dir, unrouted=None):
        self.unrouted = unrouted  # called (name, loader args) for a connection not routed
        self.loader = loader
        self.actions = actions
        self.routes = routes
        self.connection_name = connection_name
        self.connection_dir = connection_dir
        self.saved = None
        self.saved_action_get = None

    def apply(self):
        if not applies('loader-routing'):
            return self
        loader = self.loader
        if getattr(loader.get_with_context, 'spindle_routed', False):
            return self  # already routed (nested or repeated run): leave it to its owner
        loader.add_directory(self.connection_dir)
        # Load it here, before Ansible forks a worker per task: each worker then inherits
        # the imported module and its option definitions instead of compiling the source
        # and parsing its DOCUMENTATION again (~20 ms per task).
        loader.get(self.connection_name, class_only=True)
        own = loader.__dict__
        self.saved = {k: own[k] for k in ('get', 'get_with_context') if k in own}
        routed = _route(
            loader.get_with_context, self.routes, self.connection_name, self.connection_dir, self.unrouted
        )
        loader.get_with_context = routed
        loader.get = _routed_get(routed)
        if self.actions is not None and not getattr(self.actions.get, 'spindle_routed', False):
            self.saved_action_get = self.actions.__dict__.get('get')
            self.actions.get = _routed_action_get(self.actions.get)
        return self

    def restore(self):
        if self.saved is None:
            return
        for key in ('get', 'get_with_context'):
            if key in self.saved:
                setattr(self.loader, key, self.saved[key])
            else:
                self.loader.__dict__.pop(key, None)
        if self.actions is not None and getattr(self.actions.get, 'spindle_routed', False):
            if self.saved_action_get is not None:
                self.actions.get = self.saved_action_get
            else:
                self.actions.__dict__.pop('get', None)
        self.saved = None
        self.saved_action_get = None


# -- copy-fast-path -----------------------------------------------------------------------------

_FAST_CLASSES = {}

#: Ansible's own action classes that get the fast path (not user overrides of them).
_ROUTED_MODULES = ('ansible.plugins.action.copy', 'ansible.plugins.action.template')


def _no_early_tmp(self):
    # The stock actions make the remote temp dir before anything else (two round trips, and
    # one more to remove it); the fast path needs none, the stock path makes it when needed.
    return False


def fast_class(cls):
    """A subclass of Ansible's copy (or template) action class: no temp dir made up front;
    for copy, ``_copy_file`` tries the fast path first."""
    from spindle_ansible.copyfast import fast_copy_file

    fast = _FAST_CLASSES.get(cls)
    if fast is None:
        attrs = {'_early_needs_tmp_path': _no_early_tmp, '_spindle_fast_copy': True}
        if cls.__module__ == 'ansible.plugins.action.copy':

            def _copy_file(self, source_full, source_rel, content, content_tempfile, dest, task_vars, follow):
                done = fast_copy_file(
                    self, source_full, source_rel, content, content_tempfile, dest, task_vars, follow
                )
                if done is not NotImplemented:
                    return done
                if self._connection._shell.tmpdir is None:
                    self._make_tmp_path()  # what run() would have made up front
                return cls._copy_file(
                    self, source_full, source_rel, content, content_tempfile, dest, task_vars, follow
                )

            attrs['_copy_file'] = _copy_file
        fast = type('Spindle' + cls.__name__, (cls,), attrs)
        _FAST_CLASSES[cls] = fast
    return fast


def route_action(name, obj, connection):
    """Called on every action plugin the loader hands out: the builtin copy and template
    actions with a spindle connection get the one-round-trip path."""
    if obj is None or isinstance(obj, type) or getattr(obj, '_spindle_fast_copy', False):
        return obj
    cls = type(obj)
    if cls.__module__ not in _ROUTED_MODULES or cls.__name__ != 'ActionModule':
        return obj
    if not hasattr(connection, 'spindle_copy_fast') or not applies('copy-fast-path'):
        return obj
    obj.__class__ = fast_class(cls)
    return obj


# -- become-wrap --------------------------------------------------------------------------------


def wrap_become(plugin, memory, limit):
    """Wrap ``plugin.build_become_command`` (this instance only) so each command it wraps is
    remembered in ``memory`` (wrapped -> unwrapped, at most ``limit`` entries, oldest dropped).
    Returns whether it is wrapped."""
    if plugin is None:
        return False
    if getattr(plugin, '_spindle_wrapped', False):
        return True
    if not applies('become-wrap'):
        return False
    original = plugin.build_become_command

    def build_become_command(cmd, shell):
        wrapped = original(cmd, shell)
        if cmd and wrapped != cmd:
            while len(memory) >= limit:
                memory.pop(next(iter(memory)))
            memory[wrapped] = cmd
        return wrapped

    plugin.build_become_command = build_become_command
    plugin._spindle_wrapped = True
    return True


# -- async-execute-module ---------------------------------------------------------------------

_ASYNC_CLASSES = {}


def _async_execute_module(
    cls,
    self,
    module_name=None,
    module_args=None,
    tmp=None,
    task_vars=None,
    persist_files=False,
    delete_remote_tmp=None,
    wrap_async=False,
    **kwargs,
):
    base = super(cls, self)._execute_module
    conn = self._connection
    kw = dict(
        kwargs,
        module_name=module_name,
        module_args=module_args,
        tmp=tmp,
        task_vars=task_vars,
        persist_files=persist_files,
        delete_remote_tmp=delete_remote_tmp,
    )
    if not wrap_async:
        return base(wrap_async=False, **kw)
    from spindle_ansible.asyncrun import AsyncStock, job_dialect, refusal

    why = refusal(self)
    if why is None:
        job = dict(
            job_dialect(), jid='j%d' % secrets.randbelow(999999999999), limit=int(self._task.async_val)
        )
        conn._spindle_async = job
        try:
            data = base(wrap_async=False, **kw)
        except AsyncStock as e:
            why = str(e)
        else:
            if job.get('started'):
                # what stock's _execute_module does after an async start
                data['changed'] = True
                return data
            # no module run reached the connection (a custom action plugin?): its result
            # came from elsewhere; nothing ran asynchronously
            return data
        finally:
            conn._spindle_async = None
    conn._spindle_async_reason = why
    try:
        return base(wrap_async=True, **kw)
    finally:
        conn._spindle_async_reason = None


def async_class(cls):
    """``cls`` with the async ``_execute_module`` (one subclass per action class)."""
    sub = _ASYNC_CLASSES.get(cls)
    if sub is None:

        def execute_module(self, *args, **kwargs):
            return _async_execute_module(sub, self, *args, **kwargs)

        sub = type(
            'SpindleAsync' + cls.__name__,
            (cls,),
            {'_execute_module': execute_module, '_spindle_async_action': True},
        )
        _ASYNC_CLASSES[cls] = sub
    return sub


def route_async(obj, connection):
    """Called on every action plugin the loader hands out: an async task's action (and
    gather_facts, which may start async jobs itself) with a spindle connection starts its
    module in the agent (:mod:`spindle_ansible.asyncrun`)."""
    from spindle_ansible.asyncrun import ASYNC_BY_ITSELF

    if obj is None or isinstance(obj, type) or getattr(obj, '_spindle_async_action', False):
        return obj
    task = getattr(obj, '_task', None)
    if not hasattr(connection, 'spindle_run_async'):
        return obj
    if not getattr(task, 'async_val', 0) and type(obj).__module__ not in ASYNC_BY_ITSELF:
        return obj
    if not applies('async-execute-module'):
        return obj
    obj.__class__ = async_class(type(obj))
    return obj


# -- file-module --------------------------------------------------------------------------------

_FILE_CLASSES = {}


def _file_execute_module(cls, self, *args, **kwargs):
    from spindle_ansible import filemod

    conn = self._connection
    outer = getattr(self, '_spindle_file_scope', None)
    scope = filemod.Scope(
        conn,
        wrap_async=bool(kwargs.get('wrap_async', args[6] if len(args) > 6 else False)),
    )
    self._spindle_file_scope = scope
    try:
        return super(cls, self)._execute_module(*args, **kwargs)
    finally:
        self._spindle_file_scope = outer
        scope.end(conn)


def _file_configure_module(cls, self, module_name, module_args, task_vars):
    scope = getattr(self, '_spindle_file_scope', None)
    # a module this _execute_module pipelines to the connection gets a token (module-token)
    tokens = (
        _TOKENS['installed']
        and scope is not None
        and not _TOKENS['active']
        and self._is_pipelining_enabled('new', scope.wrap_async)
    )
    open_early = getattr(self._connection, 'spindle_open_early', None)
    if scope is not None and open_early is not None:
        # the host's stream opens while the module is built (spindle_ansible.opening)
        open_early(getattr(getattr(self, '_task', None), '_uuid', None))
    if tokens:
        _TOKENS['active'] = True
    try:
        built = super(cls, self)._configure_module(
            module_name=module_name, module_args=module_args, task_vars=task_vars
        )
    finally:
        if tokens:
            _TOKENS['active'] = False
    if scope is not None:
        scope.configured(self, built)
    return built


def _file_make_tmp_path(cls, self, remote_user=None):
    scope = getattr(self, '_spindle_file_scope', None)
    if scope is not None:
        placeholder = scope.defer_tmp(self)
        if placeholder is not None:
            return placeholder
    return super(cls, self)._make_tmp_path(remote_user)


def file_module_class(cls):
    """``cls`` with the file-module overrides (one subclass per action class)."""
    sub = _FILE_CLASSES.get(cls)
    if sub is None:

        def execute_module(self, *args, **kwargs):
            return _file_execute_module(sub, self, *args, **kwargs)

        def configure_module(self, module_name, module_args, task_vars):
            return _file_configure_module(sub, self, module_name, module_args, task_vars)

        def make_tmp_path(self, remote_user=None):
            return _file_make_tmp_path(sub, self, remote_user)

        sub = type(
            'SpindleFile' + cls.__name__,
            (cls,),
            {
                '_execute_module': execute_module,
                '_configure_module': configure_module,
                '_make_tmp_path': make_tmp_path,
                '_spindle_file_action': True,
                '__module__': cls.__module__,  # (route_async knows gather_facts by its module)
            },
        )
        _FILE_CLASSES[cls] = sub
    return sub


def route_file_module(obj, connection):
    """Called on every action plugin the loader hands out: with a spindle connection, an
    old-style, WANT_JSON or binary module the action runs goes to the agent in one call."""
    if obj is None or isinstance(obj, type) or getattr(obj, '_spindle_file_action', False):
        return obj
    if not hasattr(connection, 'spindle_file_module') or not applies('file-module'):
        return obj
    obj.__class__ = file_module_class(type(obj))
    return obj


# -- module-token -------------------------------------------------------------------------------

#: What a wrapper carries in place of its zip: this prefix and 64 hex digits (base64 letters,
#: so the wrapper's zip literal stays well formed).
TOKEN_PREFIX = b'spindleZ'
#: ``installed``: the load patch is in place (decided in the controller before the workers
#: fork); ``active``: a module being built now gets a token; ``zips``: token -> the zip's
#: base64 bytes, in this worker (a worker runs one task: a few entries at most).
_TOKENS = {'installed': False, 'active': False, 'zips': {}}


def install_module_token():
    """Patch ``_CachedModule.load`` (once, in the controller: workers inherit it). Silent on
    ansible-core 2.18, which has no such object (its cache holds the zip bytes alone)."""
    if _TOKENS['installed']:
        return
    from ansible.executor import module_common

    if core_version() == '2.18' and not hasattr(module_common, '_CachedModule'):
        return
    if not applies('module-token'):
        return
    cached = module_common._CachedModule
    orig = cached.load.__func__

    def load(cls, path):
        module = orig(cls, path)
        if not _TOKENS['active']:
            return module
        try:
            st = os.stat(path)
        except OSError:
            return module
        # The cache file is written once per run (renamed into place): its identity names
        # its content for the rest of the run.
        ident = '%s\0%d\0%d\0%d' % (path, st.st_ino, st.st_size, st.st_mtime_ns)
        token = TOKEN_PREFIX + hashlib.sha256(ident.encode('utf-8', 'surrogateescape')).hexdigest().encode()
        data = module.zip_data
        _TOKENS['zips'][token] = data if isinstance(data, bytes) else str(data).encode('ascii')
        return dataclasses.replace(module, zip_data=token)

    load.spindle_token = True
    cached.load = classmethod(load)
    _TOKENS['installed'] = True


def token_zip(literal):
    """The zip (base64 bytes) a wrapper's zip literal stands for, if it is a token of this
    worker's; None for anything else."""
    if not literal.startswith(TOKEN_PREFIX):
        return None
    return _TOKENS['zips'].get(bytes(literal))


def expand_token(in_data):
    """``in_data`` as Ansible would have built it: a wrapper carrying a token gets its zip back
    (for a command that goes anywhere but the agent). Anything else is returned as it is."""
    if not in_data or not _TOKENS['zips'] or TOKEN_PREFIX not in in_data:
        return in_data
    for token, data in _TOKENS['zips'].items():
        quoted = b"zip_data='" + token + b"'"
        if quoted in in_data:
            in_data = in_data.replace(quoted, b"zip_data='" + data + b"'")
    return in_data
