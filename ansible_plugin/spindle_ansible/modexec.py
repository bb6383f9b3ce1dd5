"""Running Ansible modules inside the target's persistent agent instead of a new Python.

The connection plugin calls :func:`run_in_agent` for a pipelined module execution (the
AnsiballZ wrapper on stdin of ``<python>``). The wrapper Ansible built is taken apart
(:mod:`spindle_ansible.ansiballz`): its zip (the module and exactly the module_utils Ansible
resolved, collections included) becomes content-addressed blobs, its params and metadata the
request. The daemon pushes to the target only blobs its stream lacks, inline with the call,
so a cached task is one request and one reply. The agent runs the module with the payload's own
runner (``src/agent/modrun/``), in-process with its state restored, or forked.

A module this path cannot run raises :class:`StockPath` with the reason, which the caller
shows the user (once per host and reason) and reports to the daemon before it runs the stock
command. The module runs under exactly the interpreter Ansible resolved for the task: the
call names it (``interpreter`` in the spec), and the daemon routes it to an agent running it.
"""

import base64
import dataclasses
import hashlib
import os

from spindle_ansible import ansiballz, compat, plancache
from spindle_ansible.client import SpindleError

#: Modules that can re-launch themselves under another interpreter (``respawn_module``, when
#: the task's Python lacks the system's apt/dnf bindings), which imports the payload from a
#: file: they run in a forked child of the agent with the payload zip in a private temp
#: directory, as stock's wrapper has it, removed when the run ends (docs/module-execution.md).
RESPAWNING = frozenset(
    (
        'apt',
        'apt_repository',
        'dnf',
        'dnf5',
        'package_facts',
        'deb822_repository',
    )
)

#: Modules that always run in a forked child of the agent (they daemonize, hold process-wide
#: state in C libraries, or are known from Mitogen's experience to misbehave in-process).
ALWAYS_FORK = frozenset(
    (
        'firewalld',
        'service',
        'sysvinit',
        'systemd',
        'systemd_service',
        'reboot',
        'expect',
        'selinux',
        'seboolean',
        'sefcontext',
        'seport',
        'selogin',
    )
)

ISOLATION = ('warm', 'inproc', 'fork', 'off')

_SYNTHETIC = 'ansible/module_utils/__init__.py'  # made by Ansible's module finder
_CORE_SHA = {}  # payload path -> sha256 of the controller's installed ansible-core file (or None)


def _installed_sha(rel):
    if rel not in _CORE_SHA:
        import ansible

        site = os.path.dirname(os.path.dirname(os.path.abspath(ansible.__file__)))
        try:
            with open(os.path.join(site, rel), 'rb') as f:
                _CORE_SHA[rel] = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            _CORE_SHA[rel] = None
    return _CORE_SHA[rel]


def prime_core_hashes():
    """Hash the installed ansible-core's module_utils once, in the controller process before
    Ansible forks its workers: each worker is a fresh fork and would otherwise hash the ones
    its task uses again (~16 ms for all 160 files, against a few ms per task)."""
    if _CORE_SHA:
        return
    import ansible

    site = os.path.dirname(os.path.dirname(os.path.abspath(ansible.__file__)))
    top = os.path.join(site, 'ansible', 'module_utils')
    for root, _dirs, files in os.walk(top):
        for name in files:
            if name.endswith('.py'):
                _installed_sha(os.path.relpath(os.path.join(root, name), site))


#: Modules every worker of a module task imports (the JSON profiles of module arguments and
#: results, ansible-core 2.19+); imported once before Ansible forks its workers instead.
_WORKER_IMPORTS = (
    'ansible.module_utils._internal._json._profiles._module_legacy_m2c',
    'ansible.module_utils._internal._json._profiles._module_legacy_c2m',
    'ansible.module_utils._internal._json._profiles._module_modern_m2c',
    'ansible.module_utils._internal._json._profiles._module_modern_c2m',
)


def prime_worker_imports():
    """Import what each worker would import again for its module task (~1 ms a task), in the
    controller process before the workers fork; a version without them imports nothing."""
    import importlib

    for name in _WORKER_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def core_files(manifest):
    """The payload's ansible-core module_utils (bytes identical to the installed ansible-core),
    which warm mode keeps loaded in the agent; None when a custom file shadows a core one
    (then nothing is kept: docs/module-execution.md, warm mode)."""
    core = []
    for rel, digest in manifest.items():
        if rel == _SYNTHETIC or not rel.startswith('ansible/module_utils/'):
            continue
        installed = _installed_sha(rel)
        if installed is None:
            continue
        if installed != digest:
            return None
        core.append(rel)
    return sorted(core)


class StockPath(Exception):
    """A module run that takes Ansible's stock command path (a new Python per task), and why.
    Never silent: the connection warns once per host and reason and the daemon counts it."""


#: Characters a task interpreter may have to get an agent of its own (what the agent accepts).
_PLAIN = frozenset('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./+-')


def plain_program(path):
    """Whether ``path`` is an interpreter an agent can be started with (no quoting needed)."""
    return bool(path) and set(path) <= _PLAIN and not path.startswith('-')


def is_module_run(in_data):
    """Whether ``in_data`` is an AnsiballZ wrapper (a pipelined module run)."""
    return bool(in_data) and b'_ANSIBALLZ_WRAPPER = True' in in_data[:4096]


#: Programs Ansible runs on its remote temp files that are not modules.
_FILE_TOOLS = frozenset(
    (
        'rm',
        'chmod',
        'chown',
        'chgrp',
        'chflags',
        'setfacl',
        'mkdir',
        'cp',
        'mv',
        'cat',
        'echo',
        'test',
        'umask',
        '(',
    )
)


#: How the files Ansible runs a module from start (the module; the async wrapper).
_MODULE_FILES = ('AnsiballZ_', 'async_wrapper')


def file_module_reason(cmd, in_data=None, sudoable=True):
    """Why a command that runs a module is not an agent's (Ansible put the module in a file, or
    pipes a non-Python module to its interpreter), or None when ``cmd`` runs no module (raw,
    shell, the temp dir's mkdir/chmod/rm, interpreter discovery)."""
    if in_data:
        # A module on stdin (an AnsiballZ wrapper went to plan()); what else Ansible pipes
        # (interpreter discovery's platform script, on 2.18) is not sudoable.
        return 'non-Python module (its interpreter reads it on stdin)' if sudoable else None
    try:
        _env, argv = ansiballz.split_module_command(cmd)
    except ValueError:
        return None
    # A module file is AnsiballZ_<name> in Ansible's remote temp dir (ActionBase._execute_module,
    # every style), or async_wrapper.py starting one; another file there is the script
    # action's script, which is no module.
    if (
        not any('/ansible-tmp-' in w and os.path.basename(w).startswith(_MODULE_FILES) for w in argv[:2])
        or os.path.basename(argv[0]) in _FILE_TOOLS
    ):
        return None
    if 'async_wrapper' in cmd:
        return "async task (Ansible runs it from files with its async_wrapper)"
    from ansible import constants as C

    if C.DEFAULT_KEEP_REMOTE_FILES:
        return 'ANSIBLE_KEEP_REMOTE_FILES is set (modules run from files)'
    # Such a module runs in the agent (spindle_ansible.filemod) unless it is an async task's
    # first try (async_wrapper then runs it: "async task: ..."), or the connection was told a
    # more precise reason (which it says instead), or the file-module patch is not applied.
    return 'old-style, WANT_JSON or binary module (Ansible runs it from a file)'


def plan(cmd, in_data, isolation='warm', cwd=None, cache=None):
    """The agent request for a pipelined module run and its code :class:`Blobs`; None when
    ``in_data`` is no module (a plain command); :class:`StockPath` when the module must run
    stock. What the payload's zip holds is read once per run (``cache``: the run's
    :mod:`spindle_ansible.plancache`), so a cached task hashes the zip instead of unpacking it."""
    if not is_module_run(in_data):
        return None
    if isolation == 'off':
        raise StockPath('spindle_task_isolation is off')
    if cache is None:
        cache = plancache.run_cache()
    try:
        meta = ansiballz.read_wrapper(in_data, cache)
        env, argv = ansiballz.split_module_command(cmd)
    except Exception as e:
        raise StockPath('the module payload could not be read (%s: %s)' % (type(e).__name__, e))
    if meta.get('extensions'):
        raise StockPath('AnsiballZ debugger/coverage extensions are on')
    if len(argv) != 1:
        raise StockPath(
            'interpreter %r has arguments (an agent needs a plain interpreter path)' % ' '.join(argv)
        )
    if not plain_program(argv[0]):
        raise StockPath('interpreter %r is not a plain path' % argv[0])
    if ('zip' not in meta and 'zip_b64' not in meta) or 'params' not in meta:
        raise StockPath('unrecognised AnsiballZ wrapper')
    name = str(meta.get('ansible_module') or '')
    zip_b64, zip_bytes = meta.pop('zip_b64', None), meta.pop('zip', None)
    if zip_b64 is not None and zip_b64.startswith(compat.TOKEN_PREFIX):
        # the zip this worker's Ansible would have put there (compat: module-token)
        real = compat.token_zip(zip_b64)
        if real is None:
            raise StockPath('the module payload names a zip this worker does not hold')
        key = 't' + zip_b64[len(compat.TOKEN_PREFIX) :].decode('ascii')

        def unpack():
            return ansiballz.unpack(base64.b64decode(real))
    elif zip_b64 is not None:
        key = 'b' + hashlib.sha256(zip_b64).hexdigest()

        def unpack():
            return ansiballz.unpack(base64.b64decode(zip_b64))
    else:
        key = 'z' + hashlib.sha256(zip_bytes).hexdigest()

        def unpack():
            return ansiballz.unpack(zip_bytes)

    known = cache.get('zip', key)
    if known is None:
        files = unpack()
        manifest = ansiballz.manifest(files)
        known = {'manifest': manifest, 'core': core_files(manifest)}
        cache.put('zip', key, known)
        blobs = Blobs(manifest.values(), lambda: files, manifest)
    else:
        manifest = known['manifest']
        blobs = Blobs(manifest.values(), unpack, manifest)
    mode = 'fork' if isolation == 'fork' or name in ALWAYS_FORK or name in RESPAWNING else 'inproc'
    core = None
    if mode == 'inproc' and isolation == 'warm':
        core = known['core']
        if core:
            mode = 'warm'
    req = dict(meta, env=env)
    if cwd is not None:
        req['cwd'] = cwd  # the local connection runs modules in the playbook's directory
    payload = {'op': 'run_module', 'req': req, 'manifest': manifest, 'mode': mode, 'interpreter': argv[0]}
    if name in RESPAWNING:
        payload['disk'] = True
    if mode == 'warm':
        payload['core'] = core
    return payload, blobs


class Blobs(object):
    """Module code blobs by content hash: the hashes at once, the bytes only when the daemon
    lacks some (a plan read from the run's cache has not unpacked its zip). ``update`` merges
    another run's (copy_fast carries two module runs)."""

    def __init__(self, hashes=(), load=None, manifest=None):
        self._hashes = set(hashes)
        self._sources = [(load, manifest)] if load is not None else []
        self._data = None

    @classmethod
    def of(cls, data):
        """Blobs already in memory (hash -> bytes)."""
        return cls(data, lambda: data, dict((h, h) for h in data))

    def hashes(self):
        return sorted(self._hashes)

    def update(self, other):
        self._hashes |= other._hashes
        self._sources += other._sources
        self._data = None

    def get(self, digest):
        """The bytes of blob ``digest``, or None."""
        if self._data is None:
            self._data = {}
            for load, manifest in self._sources:
                for path, data in load().items():
                    self._data[manifest[path]] = data
        return self._data.get(digest)


def for_interpreter(target, interpreter):
    """``target`` (a TargetSpec) for a module that must run under ``interpreter``: the daemon
    runs it in the host's agent when that agent is this interpreter, else in a nested agent
    started under it on the same connection; a stream not started yet starts under it."""
    return dataclasses.replace(target, interpreter=interpreter, python=target.python or interpreter)


def call_with_blobs(client, target, payload, blobs):
    """The daemon's ``call`` with code :class:`Blobs`: the daemon pushes to the target
    those its stream lacks; blobs the daemon itself lacks are uploaded once and the call
    retried. An agent that dropped code it was sent (its store is bounded) answers
    ``missing_blobs`` before running anything; the daemon then forgets what it sent that
    stream, and the call is made once more (the code goes with it)."""
    hashes = blobs.hashes()
    for attempt in (1, 2):
        try:
            return client.request('call', target, payload=payload, blobs=hashes)
        except SpindleError as e:
            if attempt == 1 and e.kind == 'remote' and (e.message or '').startswith('missing_blobs:'):
                continue
            if e.kind != 'missing_blobs' or attempt == 2:
                raise
            for h in e.details.get('missing') or hashes:
                data = blobs.get(h)
                if data is not None:
                    client.request('blob_put', hash=h, data_b64=base64.b64encode(data).decode('ascii'))
    raise AssertionError('unreachable')


def run_in_agent(client, target, cmd, in_data, isolation='warm', cwd=None):
    """``(rc, stdout, stderr)`` of the module run in the agent; None when ``in_data`` is no
    module; :class:`StockPath` when it must run stock."""
    planned = plan(cmd, in_data, isolation, cwd)
    if planned is None:
        return None
    payload, blobs = planned
    return _call(client, target, payload, blobs)


def run_async_in_agent(client, target, cmd, in_data, job, isolation='warm', cwd=None):
    """An async task's module started as a detached job in the agent (what Ansible's
    async_wrapper does; ``job``: ``jid`` prefix, ``limit`` seconds, the version's ``ints`` and
    ``blank_junk``): ``(rc, stdout, stderr)`` of the start, the job id and status file; None
    when ``in_data`` is no module; :class:`StockPath` when the agent cannot run it."""
    planned = plan(cmd, in_data, isolation, cwd)
    if planned is None:
        return None
    payload, blobs = planned
    payload['mode'] = 'fork'  # the job is a forked child of the agent (counted so)
    payload['async'] = dict((k, job[k]) for k in ('jid', 'limit', 'ints', 'blank_junk'))
    return _call(client, target, payload, blobs)


def _call(client, target, payload, blobs):
    try:
        r = call_with_blobs(client, for_interpreter(target, payload['interpreter']), payload, blobs)
    except SpindleError as e:
        if e.kind != 'interpreter_failed':
            raise
        # Stock Ansible runs the module with that interpreter and reports how it failed.
        raise StockPath(
            'interpreter %s did not start an agent (%s)'
            % (payload['interpreter'], e.message.splitlines()[0][:200] if e.message else '')
        )
    if r.get('fallback'):
        raise StockPath(r['fallback'])
    return r['rc'], base64.b64decode(r['stdout_b64']), base64.b64decode(r['stderr_b64'])
