"""Old-style, WANT_JSON and binary modules in one agent call.

Ansible runs these modules from files: ``_execute_module`` makes a remote temp dir
(``_make_tmp_path``: ``echo ~`` and ``mkdir``), transfers the module and an args file
(key=value words for old-style, JSON for WANT_JSON and binary), chmods them, runs
``[env] [interpreter] <dir>/AnsiballZ_<name> <dir>/args`` and removes the dir: six to seven
requests and files on the target per task. With a spindle connection the ``file-module`` patch
(:mod:`spindle_ansible.compat`) gives the action a :class:`Scope` per ``_execute_module``:
when ``_configure_module`` built such a module, ``_make_tmp_path`` makes nothing and returns a
placeholder path (``PLACEHOLDER_ROOT/ansible-tmp-...``, the name Ansible would give the dir).
Everything else is Ansible's own: the args file's content, the transfers (``put_file``, which
the connection keeps in memory for paths under the placeholder), the chmod (answered by the
connection: the agent gives the files their modes), and the command, built by Ansible (become,
interpreter from the shebang or ``ansible_*_interpreter``, environment, ``sleep 0``). That
command reaches the connection's ``exec_command``, which sends one ``run_module`` call with
``file``: the agent makes the private 0700 dir under the remote tmp Ansible would use
(``remote_tmp``, or ``system_tmpdirs`` when becoming an unprivileged user; ``~`` expanded as the
user the module runs as), writes the files (the module as a content-addressed blob, so a
repeated task sends only its hash), runs the command with the dir's real path in place of the
placeholder exactly as ``exec`` runs a command (login shell, terminal as ``ssh -tt`` would give),
and removes the dir whatever happens. Ansible parses the reply as stock parses the command's.

What keeps the stock path (and says why): async tasks (async_wrapper runs them from files),
ANSIBLE_KEEP_REMOTE_FILES (the user wants the files), a remote temp dir made before the module
was built (by the action, whose module goes in it, or by ``_execute_module`` for a task Ansible
does not pipeline: ansible-core 2.18 with su, :data:`NOT_PIPELINED`, said for new-style modules
run from a file too), ``spindle_task_isolation: off``, and a module file over
:data:`MAX_MODULE`.
"""

import base64
import hashlib
import os
import stat

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.utils.display import Display

from spindle_ansible.ansiballz import split_module_command
from spindle_ansible.modexec import Blobs, call_with_blobs

display = Display()

#: Commands Ansible runs on its temp dir's files around a module run from files (chmod u+x,
#: the setfacl/chown/chgrp attempts for an unprivileged become user, rm).
_TMP_TOOLS = frozenset(('chmod', 'chown', 'chgrp', 'setfacl', 'chflags', 'rm'))

#: Module styles Ansible runs from files (ansible/executor/module_common.py).
FILE_STYLES = ('old', 'non_native_want_json', 'binary')

#: The largest module file sent to an agent (agents keep module code in RAM).
MAX_MODULE = 16 * 1024 * 1024

#: Where the placeholder temp dirs live (never made: the agent puts the real path in).
PLACEHOLDER_ROOT = '/spindle-deferred-tmp'

#: The reason prefix of every file-module stock path (and of async tasks of these modules).
STYLE = 'old-style, WANT_JSON or binary module'

#: Why a module (any style) runs from a file when Ansible itself does not pipeline the task:
#: _execute_module then makes the temp dir before it builds the module (ansible-core 2.18
#: decides pipelining itself and refuses it with su; 2.19+ asks the connection).
NOT_PIPELINED = 'Ansible does not pipeline this task (ansible-core 2.18 with su): the module runs from a file'


def built_style(built):
    """``(style, module_path, size)`` of what ``_configure_module`` returned: a tuple
    ``(style, shebang, data, path)`` on ansible-core 2.18, ``(_BuiltModule, path)`` on 2.19+."""
    if len(built) == 4:
        style, _shebang, data, path = built
    else:
        bits, path = built
        style, data = getattr(bits, 'module_style', None), getattr(bits, 'b_module_data', None)
    if style == 'binary':
        try:
            size = os.path.getsize(path)
        except (OSError, TypeError):
            size = None
    else:
        size = len(data) if data is not None else None
    return style, path, size


class Scope(object):
    """One ``_execute_module`` of an action with a spindle connection."""

    def __init__(self, conn, wrap_async=False):
        self.wrap_async = wrap_async
        self.entry_tmpdir = conn._shell.tmpdir  # a temp dir the action made before the call
        self.style = None
        self.ready = False  # the module may go to the agent: defer the temp dir
        self.placeholder = None
        self.reason = None

    def configured(self, action, built):
        """``_configure_module`` built the task's module: decide whether it goes to the agent
        (``ready``) or why not (told to the connection, which says it with the stock run)."""
        if self.style is not None:
            return  # (async_wrapper's, on the stock async path)
        try:
            style, _path, size = built_style(built)
        except (TypeError, ValueError):
            return
        self.style = style
        if self.wrap_async:
            return  # async: the async_wrapper path gives its own reason
        from ansible import constants as C

        conn = action._connection
        if C.DEFAULT_KEEP_REMOTE_FILES:
            return  # the connection names this reason (modexec.file_module_reason)
        if self.entry_tmpdir is None and conn._shell.tmpdir is not None:
            # _execute_module made it before building the module: Ansible does not pipeline
            # this task, so even a new-style module runs from a file
            self.reason = conn._spindle_file_reason = NOT_PIPELINED
            return
        if style not in FILE_STYLES:
            return
        if conn._shell.tmpdir is not None:
            why = 'the action made its remote temp dir first (Ansible runs it from a file there)'
        elif size is None or size > MAX_MODULE:
            why = 'the module file is over %d MiB (Ansible runs it from a file)' % (MAX_MODULE >> 20)
        else:
            why = conn.spindle_file_module()
        if why:
            self.reason = '%s: %s' % (STYLE, why)
            conn._spindle_file_reason = self.reason
        else:
            self.ready = True

    def defer_tmp(self, action):
        """The placeholder ``_make_tmp_path`` returns for a module going to the agent (None:
        make the real dir)."""
        conn = action._connection
        if not self.ready or self.placeholder is not None or conn._shell.tmpdir is not None:
            return None
        remote_tmp = action.get_shell_option('remote_tmp', default='~/.ansible/tmp')
        base = remote_tmp
        if action._is_become_unprivileged():
            # as the shell's mkdtemp(system=True): a system dir the become user can use
            dirs = action.get_shell_option('system_tmpdirs', default=['/var/tmp', '/tmp']) or ['/var/tmp']
            base = remote_tmp.rstrip('/') if remote_tmp.rstrip('/') in dirs else dirs[0]
        name = conn._shell._generate_temp_dir_name()
        placeholder = '%s/%s' % (PLACEHOLDER_ROOT, name)
        conn.spindle_file_module_begin(placeholder, base, name)
        conn._shell.tmpdir = placeholder
        self.placeholder = placeholder
        return placeholder

    def end(self, conn):
        if self.placeholder is not None:
            conn.spindle_file_module_end(self.placeholder)
            if conn._shell.tmpdir == self.placeholder:
                conn._shell.tmpdir = None  # nothing to remove: the agent removed the dir
        if self.reason is not None and getattr(conn, '_spindle_file_reason', None) == self.reason:
            conn._spindle_file_reason = None


# -- in the connection: the files kept, the commands answered, the run ------------------------


def keep_file(conn, pending, in_path, out_path):
    """A transfer into the placeholder dir: kept here, written by the agent."""
    name = to_text(out_path)[len(pending['tmp']) + 1 :]
    if not name or '/' in name or pending['ran']:
        raise AnsibleError("spindle: unexpected transfer to %s" % to_text(out_path))
    b_in = to_bytes(in_path, errors='surrogate_or_strict')
    with open(b_in, 'rb') as f:
        data = f.read()
    # as put_file gives it (the local file's mode, the local plugin's copyfile 0666), less
    # the target's umask, plus Ansible's chmod u+x (both done by the agent)
    mode = 0o666 if conn._mode() == 'local' else stat.S_IMODE(os.stat(b_in).st_mode) & 0o777
    pending['files'][name] = (data, mode)
    display.vvv(
        "SPINDLE kept %s for the module's run in the agent" % name, host=conn._play_context.remote_addr
    )


def step(pending, cmd):
    """``tool`` for a command on the placeholder dir's files that the agent's run does
    itself (Ansible's chmod u+x, its setfacl/chown attempts when becoming an
    unprivileged user, rm), ``run`` for the module's command."""
    try:
        _env, argv = split_module_command(cmd)
    except ValueError:
        argv = []
    if argv and os.path.basename(argv[0]) in _TMP_TOOLS:
        return 'tool'
    prefix = pending['tmp'] + '/'
    names = [n for n in pending['files'] if n != 'args']
    if pending['ran'] or not names or not any(w == prefix + n for w in argv for n in names):
        raise AnsibleError(
            "spindle: a command on the temp dir of an old-style, WANT_JSON or binary module "
            "that spindle does not know how to run: %s" % cmd
        )
    return 'run'


def run(conn, pending, spec, cmd, cwd, login_shell, tty):
    """The module's command run in the agent, in the private temp dir it makes, fills and
    removes (one call): ``(rc, stdout, stderr)``."""
    pending['ran'] = True
    manifest, blobs, files = {}, {}, []
    for name, (data, mode) in sorted(pending['files'].items()):
        entry = {'name': name, 'mode': mode}
        if name == 'args':  # per task: inline
            entry['data_b64'] = base64.b64encode(data).decode('ascii')
        else:  # module code: a blob, sent once per stream
            sha = hashlib.sha256(data).hexdigest()
            manifest[name] = entry['sha'] = sha
            blobs[sha] = data
        files.append(entry)
    payload = {
        'op': 'run_module',
        'mode': 'fork',
        'manifest': manifest,
        'file': {
            'tmp': pending['tmp'],
            'base': pending['base'],
            'name': pending['name'],
            'shell': cmd,
            'login_shell': login_shell,
            'tty': tty,
            'cwd': cwd,
            'files': files,
        },
    }
    r = call_with_blobs(conn._client(), spec, payload, Blobs.of(blobs))
    if 'tmp_failed' in r:
        raise AnsibleConnectionFailure(
            'Failed to create temporary directory. In some cases, you may have been able to '
            'authenticate and did not have permissions on the target directory. Consider '
            'changing the remote tmp path in ansible.cfg to a path rooted in "/tmp", for more '
            'error information use -vvv. spindle: %s' % r['tmp_failed']
        )
    return r['rc'], base64.b64decode(r['stdout_b64']), base64.b64decode(r['stderr_b64'])
