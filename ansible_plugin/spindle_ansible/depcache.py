"""What ansible-core's module dependency finder found in a source file, kept across runs.

To build a module's AnsiballZ payload, ansible-core parses the module and every module_utils
file it imports, recursively, into a syntax tree and walks it for imports
(``module_common.recursive_finder``: ``compile(..., ast.PyCF_ONLY_AST)`` and
``ModuleDepFinder``). It does this once per module per run, for every module a run uses, and
most of the work is the same files again (``basic.py`` and its ~50 helpers). Measured for
``command`` on ansible-core 2.19 (an ad hoc timing of ``recursive_finder`` in a new process,
this machine): 115 ms of CPU, 95 ms of it parsing and walking; every run pays it before the
first task of each module can start.

This cache keeps, per file, the finder's answer: the imports it found (``submodules``) and
which of them were optional. It is keyed by the sha256 of the file's source and the name and
package flag the finder was given, so an edited file is simply a new key; an entry is only
ever the finder's own result for exactly that input. A file whose tree Ansible reads for more
than its imports (a module with a top-level ``METADATA``, a file with embedded resources on
2.21) is not cached. The compat patch ``depfinder-cache`` routes the finder through
:func:`finder_init` and, on ansible-core before 2.21 (where the caller parses the file),
``module_common``'s ``compile`` through :func:`caching_compile`.

The entries live in memory, loaded in the controller before the workers fork (they inherit
it), and in one JSON file per ansible-core and Python version in the user's private spindle
directory (the persistent daemons' one: ``$XDG_RUNTIME_DIR/spindle-<uid>`` or
``/tmp/spindle-<uid>``, mode 0700; only when runs persist and it exists, so a run with a
private daemon leaves nothing behind: ``daemon.kept_dir``), written by the worker that computed new entries (the
whole file replaced by a rename; two workers writing at once lose one's new entries, which
the next run computes again). Bounded: :data:`MAX_ENTRIES` entries (oldest dropped first),
:data:`MAX_BYTES` per file (a larger or malformed file is ignored and replaced), each entry
checked on load. Off with ``SPINDLE_DEPCACHE=0``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import re
import sys
import tempfile

#: Entries kept (a run's modules use a few hundred files at most).
MAX_ENTRIES = 4096
#: The file's size limit; a larger one is ignored.
MAX_BYTES = 4 << 20
#: Imports per entry at most, names per import, characters per name.
MAX_IMPORTS = 1024
MAX_PARTS = 32
MAX_NAME = 200

_KEY = re.compile(r'[0-9a-f]{64}:[01]:[A-Za-z0-9_.]{1,%d}\Z' % 1000)
_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]{0,%d}\Z' % (MAX_NAME - 1))

_state = {
    'path': None,  # the file, or None: memory only
    'entries': {},  # key -> (submodules list of tuples, optional list of tuples)
    'plain': set(),  # source hashes with an entry (parse skipped before 2.21)
    'new': 0,  # entries this process added and has not written
    'mtime': None,  # the file's mtime when last read
    'why': None,  # why the cache is off or memory only
}


def source_hash(source):
    if isinstance(source, str):
        source = source.encode('utf-8', 'surrogateescape')
    return hashlib.sha256(bytes(source)).hexdigest()


def _key(shash, fqn, is_pkg):
    return '%s:%d:%s' % (shash, 1 if is_pkg else 0, fqn)


def _imports(value):
    """A list of name tuples from JSON, or None when anything in it is out of shape."""
    if not isinstance(value, list) or len(value) > MAX_IMPORTS:
        return None
    out = []
    for parts in value:
        if not isinstance(parts, list) or not 1 <= len(parts) <= MAX_PARTS:
            return None
        if not all(isinstance(p, str) and _NAME.match(p) for p in parts):
            return None
        out.append(tuple(parts))
    return out


def _read(path):
    """The entries of the file at ``path`` (empty when missing, too large or malformed)."""
    try:
        with open(path, 'rb') as f:
            data = f.read(MAX_BYTES + 1)
    except OSError:
        return {}
    if len(data) > MAX_BYTES:
        return {}
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        return {}
    raw = doc.get('entries') if isinstance(doc, dict) else None
    if not isinstance(raw, dict):
        return {}
    entries = {}
    for key, value in raw.items():
        if len(entries) >= MAX_ENTRIES:
            break
        if not isinstance(key, str) or not _KEY.match(key):
            continue
        if not isinstance(value, list) or len(value) != 2:
            continue
        subs, opt = _imports(value[0]), _imports(value[1])
        if subs is None or opt is None:
            continue
        entries[key] = (subs, opt)
    return entries


def _file_name(core):
    return 'depfinder-%s-py%d.%d.json' % (core, sys.version_info[0], sys.version_info[1])


def load(directory, core):
    """In the controller, before the workers fork: use ``directory`` (None: memory only) and
    read what is there. Returns why the cache is memory only, or None."""
    if os.environ.get('SPINDLE_DEPCACHE', '1') == '0':
        _state['why'] = 'off (SPINDLE_DEPCACHE=0)'
        return _state['why']
    if directory is None:
        _state['why'] = 'this run only (no persistent daemon directory: SPINDLE_PERSIST=0, or none yet)'
        return _state['why']
    _state['path'] = os.path.join(directory, _file_name(core))
    refresh()
    return None


def refresh():
    """Read the file again if it changed since (a worker of this run added entries)."""
    path = _state['path']
    if path is None:
        return
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return
    if mtime == _state['mtime']:
        return
    _state['mtime'] = mtime
    entries = _read(path)
    entries.update(_state['entries'])
    _bound(entries)
    _state['entries'] = entries
    _state['plain'] = set(k.split(':', 1)[0] for k in entries)


def _bound(entries):
    while len(entries) > MAX_ENTRIES:
        entries.pop(next(iter(entries)))


def lookup(shash, fqn, is_pkg):
    return _state['entries'].get(_key(shash, fqn, is_pkg))


def known(shash):
    return shash in _state['plain']


def store(shash, fqn, is_pkg, submodules, optional):
    """Keep the finder's answer for one file, if it is in shape (else it is not kept)."""
    key = _key(shash, fqn, is_pkg)
    subs = sorted(list(p) for p in submodules)
    opt = sorted(list(p) for p in optional)
    if not _KEY.match(key) or _imports(subs) is None or _imports(opt) is None:
        return
    _state['entries'][key] = ([tuple(p) for p in subs], [tuple(p) for p in opt])
    _bound(_state['entries'])
    _state['plain'].add(shash)
    _state['new'] += 1


def flush():
    """Write this process's new entries (merged with the file's current ones). Best effort: a
    cache that cannot be written costs the next run the parse again, nothing else."""
    path = _state['path']
    if path is None or not _state['new']:
        return
    entries = _read(path)
    entries.update(_state['entries'])
    _bound(entries)
    doc = {
        'v': 1,
        'entries': dict((k, [list(map(list, s)), list(map(list, o))]) for k, (s, o) in entries.items()),
    }
    directory = os.path.dirname(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix='.depfinder-', dir=directory)
        try:
            with os.fdopen(fd, 'w') as f:
                json.dump(doc, f, separators=(',', ':'))
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except (OSError, ValueError):
        return
    _state['new'] = 0


# -- what the compat patch installs -------------------------------------------------------------


class KnownTree(ast.Module):
    """What ``compile(source, ..., PyCF_ONLY_AST)`` returns in ``module_common`` (before 2.21)
    for a source the cache knows: an empty module (its body was checked to hold no top-level
    ``METADATA``, the only thing Ansible reads from the tree beside the finder) carrying the
    source, parsed for real only if the finder meets it under a name it has no entry for."""

    def __init__(self, shash, source, args):
        super().__init__(body=[], type_ignores=[])
        self.spindle_hash = shash
        self.spindle_source = (source, args)


def _has_metadata(tree):
    for node in getattr(tree, 'body', ()):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == 'METADATA' for t in targets):
                return True
    return False


def caching_compile(real_compile):
    """``module_common``'s ``compile``: a parse into a syntax tree (``PyCF_ONLY_AST``) of a known
    source returns a :class:`KnownTree`; a new one is parsed and tagged with its hash."""

    def compile(source, filename, mode, flags=0, *args, **kwargs):
        if flags != ast.PyCF_ONLY_AST or args or kwargs or not isinstance(source, (bytes, str)):
            return real_compile(source, filename, mode, flags, *args, **kwargs)
        shash = source_hash(source)
        if known(shash):
            return KnownTree(shash, source, (filename, mode, flags))
        tree = real_compile(source, filename, mode, flags)
        tree.spindle_hash = shash
        return tree

    compile.spindle_depcache = True
    return compile


def finder_init(init, takes_source):
    """``ModuleDepFinder.__init__``, answering from the cache (patched in place: the class
    names itself in its ``super()`` call, so a subclass in its stead would recurse).
    ``takes_source``: its second argument is the source (2.21+), else a syntax tree."""

    @functools.wraps(init)
    def __init__(self, module_fqn, data, is_pkg_init=False, *args, **kwargs):
        if takes_source:
            shash = source_hash(data) if isinstance(data, (bytes, str)) else None
        else:
            shash = getattr(data, 'spindle_hash', None)
        hit = lookup(shash, module_fqn, is_pkg_init) if shash and not args and not kwargs else None
        if hit is not None:
            ast.NodeVisitor.__init__(self)
            self.submodules = set(hit[0])
            self.optional_imports = set(hit[1])
            self.module_fqn = module_fqn
            self.is_pkg_init = is_pkg_init
            if takes_source:
                self.embeds = set()
                self.tree = ast.Module(body=[], type_ignores=[])
            return
        if isinstance(data, KnownTree):  # known source, new name: parse it after all
            source, (filename, mode, flags) = data.spindle_source
            data = _REAL_COMPILE[0](source, filename, mode, flags)
        init(self, module_fqn, data, is_pkg_init, *args, **kwargs)
        tree = getattr(self, 'tree', data)
        if (
            shash
            and not args
            and not kwargs
            and not getattr(self, 'embeds', None)
            and not _has_metadata(tree)
        ):
            store(shash, module_fqn, is_pkg_init, self.submodules, self.optional_imports)

    __init__.spindle_depcache = True
    return __init__


#: The builtin ``compile`` the patch replaced (for a known source met under a new name).
_REAL_COMPILE = [compile]


def flushing(recursive_finder):
    """``recursive_finder``, writing what it added to the cache when it returns."""

    @functools.wraps(recursive_finder)
    def wrapper(*args, **kwargs):
        try:
            return recursive_finder(*args, **kwargs)
        finally:
            flush()

    wrapper.spindle_depcache = True
    return wrapper
