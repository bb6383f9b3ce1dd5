"""copy and template in one round trip through spindle.

Ansible's copy action (which template also uses) takes, per file, a remote stat, a temp dir,
a file transfer, the copy (or file) module and a temp dir removal: four to five round trips.
For a spindle connection the action's ``_copy_file`` is replaced by :func:`fast_copy_file`
(the class swap is :mod:`spindle_ansible.compat`'s ``copy-fast-path`` patch):
it lets Ansible build both possible module invocations exactly as it would (by running
``_execute_module`` with the connection's ``exec_command`` captured, so module args,
interpreter, become and environment are Ansible's own), sends them with the file's content
in one ``copy_fast`` call, where the agent takes the action's decisions (stat with the same
follow and sha1 rules; copy when the checksums differ, file when they match), and hands the
module's output back to ``_execute_module`` so the result is parsed exactly as stock parses
it. Cases with other flows (raw, force=no, diff or check mode, async, a trailing-slash or
directory destination, an unchanged file reached through a symlink, no pipelining, become
to an unprivileged user, a file over the inline limit to a relative dest) run the stock
action unchanged. A file over the inline limit (:data:`MAX_INLINE`; :data:`VIA_INLINE`, 64 KiB,
behind a spindle_via hop) is streamed beside dest between two calls (behind a hop through the
hop's file cache: it crosses each link once, whatever the number of targets behind it).
For such a file the controller's sha1 is taken on a thread while the transfer is decided
and streams (a dest that is missing or of another size differs whatever the checksums), and
the agent takes the copy module's sha1 and md5 of the staged file while receiving it
(put ``digests``): no hashing stands between the bytes and the module's result.
"""

import base64
import os
import posixpath
import stat
import threading
import time
import uuid

from ansible.errors import AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.utils.display import Display
from ansible.utils.hashing import checksum

from spindle_ansible.client import SpindleError
from spindle_ansible.modexec import Blobs, StockPath, call_with_blobs, for_interpreter, plan

display = Display()

#: Larger files are not sent inline: they are streamed (put, spliced on the controller) to a
#: staging name beside dest between the call that compares checksums and the one that runs
#: the module (three round trips, the transfer at line rate).
MAX_INLINE = 2 * 1024 * 1024
#: Behind a spindle_via hop, files from this size are streamed like larger ones: the daemon
#: parks a put of 64 KiB or more in the hop's file cache, so it crosses the link to the hop once
#: for all the targets behind it (inline, base64 in each target's call, it would cross once per
#: target).
VIA_INLINE = 64 * 1024 - 1

_MARKER = b'_ANSIBALLZ_WRAPPER = True'


class PendingChecksum(object):
    """Ansible's ``checksum`` (sha1) of a local file, taken on a thread (hashlib and the reads
    release the GIL): ``placeholder`` stands for it in module args built before it is known."""

    def __init__(self, path):
        self.placeholder = 'spindle-pending-checksum-%s' % uuid.uuid4().hex
        self._value, self._error = None, None
        self._thread = threading.Thread(target=self._run, args=(path,), name='spindle-sha1', daemon=True)
        self._thread.start()

    def _run(self, path):
        try:
            self._value = checksum(path)
        except Exception as e:  # re-raised in the task's thread by get()
            self._error = e

    def get(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _is_module_run(in_data):
    return bool(in_data) and _MARKER in in_data[:4096]


def _capture(conn, action, runs):
    """Run ``_execute_module`` for each (name, args) with module executions captured, not
    sent: returns [(cmd, in_data, spec)] in order, or None."""
    captured = []

    def hook(cmd, in_data, spec):
        if not _is_module_run(in_data):
            return None  # anything else (interpreter discovery, ...) runs for real
        captured.append((cmd, in_data, spec))
        return 0, b'{}', b''

    conn._spindle_intercept = hook
    try:
        for name, args in runs:
            action._execute_module(
                module_name=name, module_args=dict(args), task_vars=action._spindle_task_vars
            )
    finally:
        conn._spindle_intercept = None
    return captured if len(captured) == len(runs) else None


def fast_copy_file(action, source_full, source_rel, content, content_tempfile, dest, task_vars, follow):
    """The copy action's ``_copy_file`` in one round trip, or NotImplemented (stock path)."""
    from ansible.plugins.action.copy import _create_remote_copy_args, _create_remote_file_args

    conn = action._connection
    args = action._task.args
    if not hasattr(conn, 'spindle_copy_fast'):
        return NotImplemented
    if (
        boolean(args.get('raw', 'no'), strict=False)
        or not boolean(args.get('force', 'yes'), strict=False)
        or action._task.diff
        or action._task.check_mode
        or action._task.async_val
    ):
        return NotImplemented
    shell = conn._shell
    if shell.path_has_trailing_slash(dest) or shell.tmpdir is not None:
        return NotImplemented
    if not action._is_pipelining_enabled('new'):
        return NotImplemented
    if getattr(action, '_is_become_unprivileged', lambda: True)():
        # Stock stages the file as the login user and lets the become user read it (setfacl,
        # chmod or chown): the module then cannot give it the destination's owner and mode
        # (EPERM, ignored), so a replaced file takes the staged file's mode. The stock path
        # through spindle does the same steps, so it gives the same result.
        return NotImplemented
    remote_tmp = action.get_shell_option('remote_tmp', default='~/.ansible/tmp') or '~/.ansible/tmp'
    if '$' in remote_tmp or not (remote_tmp.startswith('/') or remote_tmp.startswith('~')):
        return NotImplemented
    decrypt = boolean(args.get('decrypt', True), strict=False)
    try:
        real = action._loader.get_real_file(source_full, decrypt=decrypt)
    except AnsibleFileNotFound:
        return NotImplemented  # stock reports it
    try:
        data = None
        limit = getattr(conn, 'spindle_inline_limit', lambda: MAX_INLINE)()
        if os.path.getsize(real) <= limit:
            with open(real, 'rb') as f:
                data = f.read()
    except OSError:
        action._loader.cleanup_tmp_file(real)
        return NotImplemented
    if data is None and not posixpath.dirname(dest):
        action._loader.cleanup_tmp_file(real)
        return NotImplemented  # a large file to a relative dest: the stock flow

    lmode = None
    if args.get('mode', None) == 'preserve':
        lmode = '0%03o' % stat.S_IMODE(os.stat(real).st_mode)
    pending = None
    if data is None:
        pending = PendingChecksum(real)  # while the module runs are built and the file streams
        local_checksum = pending.placeholder
    else:
        local_checksum = checksum(real)
    suffix = os.path.splitext(dest)[1]
    if data is None:
        # Streamed beside dest (the module's move is then a rename on one filesystem).
        staged = posixpath.join(posixpath.dirname(dest), '.spindle-copy-%s%s' % (uuid.uuid4().hex, suffix))
    else:
        staged = '%s/spindle-copy-%s/.source%s' % (remote_tmp.rstrip('/'), uuid.uuid4().hex, suffix)

    copy_args = _create_remote_copy_args(args)
    copy_args.update(dict(src=staged, dest=dest, _original_basename=source_rel, follow=follow))
    if not args.get('checksum'):
        copy_args['checksum'] = local_checksum
    file_args = _create_remote_file_args(args)
    file_args.update(dict(dest=dest, _original_basename=source_rel, recurse=False, state='file'))
    file_args.pop('src', None)
    if lmode:
        copy_args['mode'] = lmode
        file_args['mode'] = lmode
    runs = [('ansible.legacy.copy', copy_args), ('ansible.legacy.file', file_args)]

    action._spindle_task_vars = task_vars
    captured = _capture(conn, action, runs)
    if captured is None:
        action._loader.cleanup_tmp_file(real)
        return NotImplemented
    res = conn.spindle_copy_fast(
        captured[0],
        captured[1],
        dest=dest,
        follow=bool(follow),
        checksum=local_checksum if pending is None else pending,
        staged=staged,
        data=data,
        source=None if data is not None else real,
    )
    if pending is not None:
        local_checksum = pending.get()
        for _, module_args in runs:
            if module_args.get('checksum') == pending.placeholder:
                module_args['checksum'] = local_checksum
    if res is None or res.get('outcome') not in ('copy', 'file'):
        action._loader.cleanup_tmp_file(real)
        return NotImplemented

    # The module ran: let Ansible parse its output as if it had run it.
    out = res['output']
    name, module_args = runs[0] if res['outcome'] == 'copy' else runs[1]
    conn._spindle_intercept = lambda cmd, in_data, spec: out if _is_module_run(in_data) else None
    try:
        module_return = action._execute_module(
            module_name=name, module_args=dict(module_args), task_vars=task_vars
        )
    finally:
        conn._spindle_intercept = None
    action._remove_tempfile_if_content_defined(content, content_tempfile)
    action._loader.cleanup_tmp_file(real)
    if not module_return.get('checksum'):
        module_return['checksum'] = local_checksum
    result = {'diff': []}
    result.update(module_return)
    return result


def agent_copy(conn, copy_run, file_run, dest, follow, sha1, staged, data, source=None):
    """One ``copy_fast`` call (see :mod:`spindle_ansible.copyfast`): ``copy_run`` and
    ``file_run`` are captured ``(cmd, in_data, spec)`` module invocations. Returns the
    agent's answer with ``output`` = the chosen module's (rc, stdout, stderr), or None
    when this path does not apply (the caller runs the stock action). For a streamed
    ``source``, ``sha1`` (the local file's checksum) may be a :class:`PendingChecksum`:
    the first call decides by size, and its placeholder in the copy run's args is
    replaced by the value before the module runs."""
    if conn.cwd and conn._mode() == 'local':
        return None  # (the stock action's module runs still go to the agent)
    spec = copy_run[2]  # the same task and connection built both (become included)
    isolation = conn.get_option('spindle_task_isolation')
    try:
        plans = [plan(to_text(cmd), in_data, isolation) for cmd, in_data, _ in (copy_run, file_run)]
    except StockPath:
        return None  # the stock action runs the modules: exec_command says why
    if None in plans or plans[0][0]['interpreter'] != plans[1][0]['interpreter']:
        return None
    spec = for_interpreter(spec, plans[0][0]['interpreter'])
    blobs = Blobs()
    runs = []
    for payload, run_blobs in plans:
        blobs.update(run_blobs)
        runs.append(dict((k, v) for k, v in payload.items() if k != 'op'))
    pending = None if isinstance(sha1, str) else sha1
    payload = {
        'op': 'copy_fast',
        'dest': dest,
        'follow': follow,
        'checksum': sha1 if pending is None else None,
        'staged': staged,
        'copy': runs[0],
        'file': runs[1],
    }

    def known():
        # The controller's checksum, in the payload and in the copy run's args.
        if pending is not None and payload['checksum'] is None:
            value = pending.get()
            payload['checksum'] = value
            req = payload['copy'].get('req') or {}
            if isinstance(req.get('params'), str):
                req['params'] = req['params'].replace(pending.placeholder, value)

    if source is None:
        known()
        payload['data_b64'] = base64.b64encode(data).decode('ascii')
    else:
        # ``source`` is streamed to ``staged`` if the agent asks (an agent that does not
        # know the op refuses it: the stock action runs)
        payload['op'] = 'copy_stream'
        payload['size'] = os.path.getsize(source)
    started = time.monotonic()
    try:
        r = call_with_blobs(conn._client(), spec, payload, blobs)
        if r.get('outcome') == 'checksum':
            # dest has the source's size: the checksums decide
            known()
            r = call_with_blobs(conn._client(), spec, payload, blobs)
        if r.get('outcome') == 'send':
            # The content differs: stream it beside dest (as the task's user), its sha1 and
            # md5 taken as it is received (the copy module's), then run the module on it.
            conn._client().put(
                copy_run[2],
                to_text(source),
                to_text(staged),
                mode=0o600,
                digests=['sha1', 'md5'],
                sync=False,
            )
            conn._timing('put of %s' % source, started, spec)
            known()
            payload['prestaged'] = True
            r = call_with_blobs(conn._client(), spec, payload, blobs)
    except SpindleError as e:
        if e.kind == 'become_failed':
            output = conn._become_command_output(e)
            if output is not None and conn._become_password_failure(e, output) is None:
                return None  # the stock action runs the module: it reports as stock does
            raise conn._become_failure(e) from None
        if e.kind == 'remote' and "unknown op 'copy_stream'" in (e.message or ''):
            display.vvv(
                "SPINDLE the agent (an older spindle binary) cannot stream a large "
                "copy: Ansible's copy action runs",
                host=conn._play_context.remote_addr,
            )
            return None
        raise conn._failure(e, 'copy') from None
    conn._timing('copy in one call (%s)' % r.get('outcome'), started, spec)
    if r.get('outcome') in ('copy', 'file'):
        r['output'] = (r['rc'], base64.b64decode(r['stdout_b64']), base64.b64decode(r['stderr_b64']))
    return r
