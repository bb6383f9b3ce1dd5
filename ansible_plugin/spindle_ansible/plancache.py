"""What :func:`spindle_ansible.modexec.plan` learns from a module payload, kept for the rest
of the run, so a cached module task costs the controller a hash instead of an unzip.

Ansible forks a fresh worker per task (and per host), so a cache in a worker's memory dies
with the task. This one is also on disk, in Ansible's own per-run local temp directory
(``DEFAULT_LOCAL_TMP``: private to the user, created before the workers fork, removed when
the run ends, where Ansible keeps its ``ansiballz_cache`` too), one small JSON file per entry:

* ``zip-<sha256 of the payload's zip literal>``: the zip's manifest (path -> sha256 of each
  file) and which of its files are the installed ansible-core's; with it, the zip is decoded
  and unpacked only when the daemon lacks one of its blobs;
* ``tpl-<sha256 of the wrapper template>``: the line numbers of the wrapper's own frames
  that a module's traceback shows (the template is the same for every module of one
  ansible-core, but parsing it took a few ms per task);
* ``v1-<sha256 of an ansible-core 2.18 wrapper without its zip and parameters>``: that
  wrapper's metadata (module name, traceback lines, ...), the same for every task of a module.

Entries are keyed by the hash of what they were computed from, so a stale or foreign entry
cannot be used for other input; a malformed one is ignored. Bounded: at most
:data:`MAX_ENTRIES` files (a run uses one per distinct module payload); past that, entries
live in the worker's memory only. The controller process preloads new entries before each
task (:meth:`PlanCache.preload`, from the spindle callback's task start; with a spindle strategy
and not the callback, workers read the files), so a worker
forked after the first task of a module reads no file at all. Measured (``bench/run``,
README): the plan of a cached ``command`` task went from ~8 ms to well under 1 ms of
controller CPU.
"""

import json
import os
import re
import tempfile

#: Files at most in a run's cache directory.
MAX_ENTRIES = 4096

_HEX64 = re.compile(r'[0-9a-f]{64}\Z')


class PlanCache(object):
    """A run's plan cache in directory ``root`` (None: this process's memory only)."""

    def __init__(self, root):
        self.root = root
        self._memo = {}
        self._seen = None  # the directory's mtime at the last preload

    def preload(self):
        """In the controller process, before a task's workers fork: the entries on disk not yet
        in memory, which each worker then inherits (no file read nor check per task). The
        directory is read only when it changed since the last call."""
        if self.root is None:
            return
        try:
            mtime = os.stat(self.root).st_mtime_ns
        except OSError:
            return
        if mtime == self._seen:
            return
        self._seen = mtime
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for name in names:
            kind, _, rest = name.partition('-')
            if kind in _VALID and rest.endswith('.json') and (kind, rest[:-5]) not in self._memo:
                self.get(kind, rest[:-5])

    def get(self, kind, key):
        """The entry ``kind``-``key``, or None."""
        if (kind, key) in self._memo:
            return self._memo[(kind, key)]
        if self.root is None:
            return None
        try:
            with open(os.path.join(self.root, '%s-%s.json' % (kind, key))) as f:
                value = json.load(f)
        except (OSError, ValueError, RecursionError):
            return None
        if not _VALID.get(kind, lambda v: False)(value):
            return None
        self._memo[(kind, key)] = value
        return value

    def put(self, kind, key, value):
        """Keep ``value`` (JSON-serialisable) as ``kind``-``key`` for the run."""
        self._memo[(kind, key)] = value
        if self.root is None:
            return
        tmp = None
        try:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            if len(os.listdir(self.root)) >= MAX_ENTRIES:
                return
            fd, tmp = tempfile.mkstemp(prefix='.new-', dir=self.root)
            with os.fdopen(fd, 'w') as f:
                json.dump(value, f, separators=(',', ':'))
            os.replace(tmp, os.path.join(self.root, '%s-%s.json' % (kind, key)))
            tmp = None
        except OSError:
            pass  # the memory copy still serves this worker
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def _valid_zip(v):
    if not isinstance(v, dict) or not isinstance(v.get('manifest'), dict):
        return False
    for path, digest in v['manifest'].items():
        if not isinstance(path, str) or not isinstance(digest, str) or not _HEX64.match(digest):
            return False
    core = v.get('core')
    return core is None or (isinstance(core, list) and all(p in v['manifest'] for p in core))


def _valid_template(v):
    return isinstance(v, dict) and all(isinstance(v.get(k), int) and v[k] > 0 for k in ('main', 'invoke'))


def _valid_v1(v):
    keys = ('dialect', 'profile', 'extensions', 'rlimit_nofile', 'tb_lines', 'module_fqn', 'ansible_module')
    return isinstance(v, dict) and v.get('dialect') == 'v1' and all(k in v for k in keys)


_VALID = {'zip': _valid_zip, 'tpl': _valid_template, 'v1': _valid_v1}

_run_cache = None


def run_cache():
    """This run's cache (in Ansible's per-run local temp directory). A forked worker keeps
    what its parent had in memory, which is still true."""
    global _run_cache
    if _run_cache is None:
        try:
            from ansible import constants as C

            root = os.path.join(C.DEFAULT_LOCAL_TMP, 'spindle_plans')
        except Exception:  # no Ansible configuration here: memory only
            root = None
        _run_cache = PlanCache(root)
    return _run_cache
