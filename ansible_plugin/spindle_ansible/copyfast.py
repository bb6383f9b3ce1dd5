"""copy and template in one round trip through spindle.

Ansible's copy action (which template also uses) takes, per file, a remote stat, a temp dir,
a file transfer, the copy (or file) module and a temp dir removal: four to five round trips.
For a spindle connection the action's ``_copy_file`` is replaced by :func:`fast_copy_file`:
it lets Ansible build both possible module invocations exactly as it would (by running
``_execute_module`` with the connection's ``exec_command`` captured, so module args,
interpreter, become and environment are Ansible's own), sends them with the file's content
in one ``copy_fast`` call, where the agent takes the action's decisions (stat with the same
follow and sha1 rules; copy when the checksums differ, file when they match), and hands the
module's output back to ``_execute_module`` so the result is parsed exactly as stock parses
it. Cases with other flows (raw, force=no, diff or check mode, async, a trailing-slash or
directory destination, an unchanged file reached through a symlink, no pipelining, become
to an unprivileged user, files over :data:`MAX_INLINE`, or of 64 KiB and more behind a
spindle_via hop: :data:`VIA_INLINE`) run the stock action unchanged.
"""

import os
import stat
import uuid

from ansible.errors import AnsibleFileNotFound
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.utils.hashing import checksum

#: Larger files take the stock path (streamed put with splice on the controller).
MAX_INLINE = 2 * 1024 * 1024
#: Behind a spindle_via hop, files from this size take the stock path: the daemon parks a put
#: of 64 KiB or more in the hop's file cache, so it crosses the link to the hop once for all
#: the targets behind it (inline, base64 in each target's call, it would cross once per target).
VIA_INLINE = 64 * 1024 - 1

_MARKER = b'_ANSIBALLZ_WRAPPER = True'
_FAST_CLASSES = {}


def _is_module_run(in_data):
    return bool(in_data) and _MARKER in in_data[:4096]


def _no_early_tmp(self):
    # The stock actions make the remote temp dir before anything else (two round trips, and
    # one more to remove it); the fast path needs none, the stock path makes it when needed.
    return False


def fast_class(cls):
    """A subclass of Ansible's copy (or template) action class: no temp dir made up front;
    for copy, ``_copy_file`` tries the fast path first."""
    fast = _FAST_CLASSES.get(cls)
    if fast is None:
        attrs = {'_early_needs_tmp_path': _no_early_tmp, '_spindle_fast_copy': True}
        if cls.__module__ == 'ansible.plugins.action.copy':
            def _copy_file(self, source_full, source_rel, content, content_tempfile, dest,
                           task_vars, follow):
                done = fast_copy_file(self, source_full, source_rel, content, content_tempfile,
                                      dest, task_vars, follow)
                if done is not NotImplemented:
                    return done
                if self._connection._shell.tmpdir is None:
                    self._make_tmp_path()  # what run() would have made up front
                return cls._copy_file(self, source_full, source_rel, content, content_tempfile,
                                      dest, task_vars, follow)

            attrs['_copy_file'] = _copy_file
        fast = type('Spindle' + cls.__name__, (cls,), attrs)
        _FAST_CLASSES[cls] = fast
    return fast


#: Ansible's own action classes that get the fast path (not user overrides of them).
_ROUTED_MODULES = ('ansible.plugins.action.copy', 'ansible.plugins.action.template')


def route_action(name, obj, connection):
    """Called on every action plugin the loader hands out: the builtin copy and template
    actions with a spindle connection get the one-round-trip path."""
    if obj is None or isinstance(obj, type) or getattr(obj, '_spindle_fast_copy', False):
        return obj
    cls = type(obj)
    if cls.__module__ not in _ROUTED_MODULES or cls.__name__ != 'ActionModule':
        return obj
    if not hasattr(connection, 'spindle_copy_fast'):
        return obj
    obj.__class__ = fast_class(cls)
    return obj


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
            action._execute_module(module_name=name, module_args=dict(args), task_vars=action._spindle_task_vars)
    finally:
        conn._spindle_intercept = None
    return captured if len(captured) == len(runs) else None


def fast_copy_file(action, source_full, source_rel, content, content_tempfile, dest,
                   task_vars, follow):
    """The copy action's ``_copy_file`` in one round trip, or NotImplemented (stock path)."""
    from ansible.plugins.action.copy import _create_remote_copy_args, _create_remote_file_args

    conn = action._connection
    args = action._task.args
    if not hasattr(conn, 'spindle_copy_fast'):
        return NotImplemented
    if (boolean(args.get('raw', 'no'), strict=False) or not boolean(args.get('force', 'yes'), strict=False)
            or action._task.diff or action._task.check_mode or action._task.async_val):
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
        limit = getattr(conn, 'spindle_inline_limit', lambda: MAX_INLINE)()
        if os.path.getsize(real) > limit:
            action._loader.cleanup_tmp_file(real)
            return NotImplemented
        with open(real, 'rb') as f:
            data = f.read()
    except OSError:
        action._loader.cleanup_tmp_file(real)
        return NotImplemented

    lmode = None
    if args.get('mode', None) == 'preserve':
        lmode = '0%03o' % stat.S_IMODE(os.stat(real).st_mode)
    local_checksum = checksum(real)
    suffix = os.path.splitext(dest)[1]
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
    res = conn.spindle_copy_fast(captured[0], captured[1], dest=dest, follow=bool(follow),
                                 checksum=local_checksum, staged=staged, data=data)
    if res is None or res.get('outcome') not in ('copy', 'file'):
        action._loader.cleanup_tmp_file(real)
        return NotImplemented

    # The module ran: let Ansible parse its output as if it had run it.
    out = res['output']
    name, module_args = runs[0] if res['outcome'] == 'copy' else runs[1]
    conn._spindle_intercept = lambda cmd, in_data, spec: out if _is_module_run(in_data) else None
    try:
        module_return = action._execute_module(module_name=name, module_args=dict(module_args),
                                               task_vars=task_vars)
    finally:
        conn._spindle_intercept = None
    action._remove_tempfile_if_content_defined(content, content_tempfile)
    action._loader.cleanup_tmp_file(real)
    if not module_return.get('checksum'):
        module_return['checksum'] = local_checksum
    result = {'diff': []}
    result.update(module_return)
    return result
