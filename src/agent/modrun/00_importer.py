"""Target side (agent) of spindle's module execution: the module runner.  Standard library only, 3.8+.

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

In parts (src/agent/modrun/, joined in name order into this one module, which the agent loads
on its first run_module): 00_importer (the in-RAM payload importer and the module_utils kept
warm between runs), 10_process_state (what a run may change in the process, saved and
restored), 15_spawn (a module's commands vfork where Ansible's preexec does nothing), 20_run
(one module run: in-process, forked, or from a private temp dir), 30_async (async tasks as
async_wrapper runs them).
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
import subprocess
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
