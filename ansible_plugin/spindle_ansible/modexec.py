"""Running Ansible modules inside the target's persistent agent instead of a new Python.

The connection plugin calls :func:`run_in_agent` for a pipelined module execution (the
AnsiballZ wrapper on stdin of ``<python>``). The wrapper Ansible built is taken apart
(:mod:`spindle_ansible.ansiballz`): its zip (the module and exactly the module_utils Ansible
resolved, collections included) becomes content-addressed blobs, its params and metadata the
request. The daemon pushes to the target only blobs its stream lacks, inline with the call,
so a cached task is one request and one reply. The agent runs the module with the payload's own
runner (``src/agent/modrun.py``), in-process with its state restored, or forked.

Anything this path does not handle returns ``None`` and the caller runs the stock command.
"""

import base64
import hashlib
import os

from spindle_ansible import ansiballz
from spindle_ansible.client import SpindleError

#: Modules that can re-launch themselves under another interpreter, which needs the payload
#: zip on disk: they take the stock command path (docs/module-execution.md).
STOCK_ONLY = frozenset((
    'apt', 'apt_repository', 'dnf', 'dnf5', 'package_facts', 'deb822_repository',
))

#: Modules that always run in a forked child of the agent (they daemonize, hold process-wide
#: state in C libraries, or are known from Mitogen's experience to misbehave in-process).
ALWAYS_FORK = frozenset((
    'firewalld', 'service', 'sysvinit', 'systemd', 'systemd_service', 'reboot', 'expect',
    'selinux', 'seboolean', 'sefcontext', 'seport', 'selogin',
))

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


def plan(cmd, in_data, isolation='warm'):
    """The agent request for this command, or None when it is not a plain pipelined module."""
    if isolation == 'off' or not in_data or b'_ANSIBALLZ_WRAPPER = True' not in in_data[:4096]:
        return None
    try:
        meta = ansiballz.parse_wrapper(in_data)
        env, argv = ansiballz.split_module_command(cmd)
    except Exception:
        return None
    if meta.get('extensions') or len(argv) != 1 or 'zip' not in meta or 'params' not in meta:
        return None  # debugger/coverage extensions, interpreter flags: stock path
    name = str(meta.get('ansible_module') or '')
    if name in STOCK_ONLY:
        return None
    files = ansiballz.unpack(meta.pop('zip'))
    manifest = ansiballz.manifest(files)
    mode = 'fork' if isolation == 'fork' or name in ALWAYS_FORK else 'inproc'
    core = None
    if mode == 'inproc' and isolation == 'warm':
        core = core_files(manifest)
        if core:
            mode = 'warm'
    payload = {'op': 'run_module', 'req': dict(meta, env=env), 'manifest': manifest,
               'mode': mode, 'interpreter': argv[0]}
    if mode == 'warm':
        payload['core'] = core
    blobs = dict((manifest[p], files[p]) for p in files)
    return payload, blobs


def call_with_blobs(client, target, payload, blobs):
    """The daemon's ``call`` with code blobs (hash -> bytes): the daemon pushes to the target
    those its stream lacks; blobs the daemon itself lacks are uploaded once and the call
    retried."""
    hashes = sorted(blobs)
    for attempt in (1, 2):
        try:
            return client.request('call', target, payload=payload, blobs=hashes)
        except SpindleError as e:
            if e.kind != 'missing_blobs' or attempt == 2:
                raise
            for h in e.details.get('missing') or hashes:
                if h in blobs:
                    client.request('blob_put', hash=h, data_b64=base64.b64encode(blobs[h]).decode('ascii'))
    raise AssertionError('unreachable')


def run_in_agent(client, target, cmd, in_data, isolation='warm'):
    """``(rc, stdout, stderr)`` of the module run in the agent, or None to run it stock."""
    planned = plan(cmd, in_data, isolation)
    if planned is None:
        return None
    payload, blobs = planned
    r = call_with_blobs(client, target, payload, blobs)
    if r.get('fallback'):
        return None
    return r['rc'], base64.b64decode(r['stdout_b64']), base64.b64decode(r['stderr_b64'])
