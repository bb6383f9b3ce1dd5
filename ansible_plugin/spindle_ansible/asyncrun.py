"""Async tasks (``async: N``, any ``poll``) started in the target's agent.

Stock Ansible runs an async task from files: ``_execute_module(wrap_async=True)`` makes a remote
temp dir, uploads the module and ``async_wrapper``, and runs a new Python that daemonizes and
writes the job's status file, which ``async_status`` (a normal module) reads. With a spindle
connection the agent starts the module from its cached code in a detached job that does what
async_wrapper does (``src/agent/modrun.py``, "async tasks": status file where and as
async_wrapper writes it, Ansible's time limit, the same started reply), so Ansible's own polling
and a later ``async_status`` (this run or a later one) work unchanged, in the agent.

This is spindle's ONE patch of Ansible internals for async, applied per action object (never
to Ansible's classes): the action loader hands out an action whose task is async with its class
swapped for a subclass whose ``_execute_module`` runs the stock method with
``wrap_async=False`` (so Ansible builds the pipelined AnsiballZ wrapper, with
``ANSIBLE_ASYNC_DIR`` in its environment, as it does for every async task) while the connection
knows the job's id prefix and time limit; then it does what stock does after an async start
(``changed`` is true). Verified on ansible-core 2.18.19, 2.19.14, 2.20.10 and 2.21.5
(``VERIFIED``). Anything else takes the stock path, and says why (a warning once per host and
reason, counted in ``spindle stats``): another ansible-core version, ANSIBLE_KEEP_REMOTE_FILES,
an action that made a remote temp dir first, and modules the agent does not run (old-style,
WANT_JSON, binary, non-Python; ``spindle_task_isolation: off``), which the connection refuses
before anything runs (:class:`AsyncStock`), and the stock method then runs them with
async_wrapper.
"""

import inspect
import secrets

#: ansible-core major.minor versions whose ``_execute_module``/async_wrapper this was checked
#: against (2.18.19, 2.19.14, 2.20.10, 2.21.5).
VERIFIED = ('2.18', '2.19', '2.20', '2.21')

#: Ansible's actions that start async jobs on their own, without ``async:`` on the task
#: (gather_facts runs several fact modules in parallel as async jobs, time limit 0 unless
#: ``gather_timeout``: async_wrapper then kills at its first check, 5 s).
ASYNC_BY_ITSELF = ('ansible.plugins.action.gather_facts',)

_CLASSES = {}
_SHAPE = []


class AsyncStock(Exception):
    """Raised by the connection for an async module run the agent cannot start (before it
    runs anything): the stock async_wrapper path runs it instead."""


def _version():
    from ansible.release import __version__
    return __version__


def _shape_ok():
    """Whether the installed ansible-core is one this was verified on, with the expected
    ``_execute_module`` signature; else the reason for the stock path."""
    if not _SHAPE:
        why = None
        version = _version()
        if '.'.join(version.split('.')[:2]) not in VERIFIED:
            why = ('ansible-core %s is not a version spindle starts async tasks in the agent on '
                   '(verified: %s)' % (version, ', '.join(VERIFIED)))
        else:
            from ansible.plugins.action import ActionBase
            try:
                params = inspect.signature(ActionBase._execute_module).parameters
            except (TypeError, ValueError):
                params = {}
            if 'wrap_async' not in params:
                why = 'ansible-core %s: unknown _execute_module shape' % version
        _SHAPE.append(why)
    return _SHAPE[0]


def job_dialect():
    """The async_wrapper details that differ by version: 2.18 writes 1/0 flags, before 2.21
    trailing blank lines after the module's JSON count as junk."""
    major, minor = (int(x) for x in _version().split('.')[:2])
    return {'ints': (major, minor) < (2, 19), 'blank_junk': (major, minor) < (2, 21)}


def refusal(action):
    """Why this action's async module run cannot start in the agent, or None."""
    from ansible import constants as C
    why = _shape_ok()
    if why:
        return why
    if C.DEFAULT_KEEP_REMOTE_FILES:
        return 'ANSIBLE_KEEP_REMOTE_FILES is set (modules run from files)'
    if action._connection._shell.tmpdir is not None:
        return 'the action made a remote temp dir first'
    if not action._is_pipelining_enabled('new'):
        return 'the connection does not pipeline modules'
    return None


def _execute_module(cls, self, module_name=None, module_args=None, tmp=None, task_vars=None,
                    persist_files=False, delete_remote_tmp=None, wrap_async=False, **kwargs):
    base = super(cls, self)._execute_module
    conn = self._connection
    kw = dict(kwargs, module_name=module_name, module_args=module_args, tmp=tmp,
              task_vars=task_vars, persist_files=persist_files, delete_remote_tmp=delete_remote_tmp)
    if not wrap_async:
        return base(wrap_async=False, **kw)
    why = refusal(self)
    if why is None:
        job = dict(job_dialect(), jid='j%d' % secrets.randbelow(999999999999),
                   limit=int(self._task.async_val))
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
    sub = _CLASSES.get(cls)
    if sub is None:
        def execute_module(self, *args, **kwargs):
            return _execute_module(sub, self, *args, **kwargs)

        sub = type('SpindleAsync' + cls.__name__, (cls,),
                   {'_execute_module': execute_module, '_spindle_async_action': True})
        _CLASSES[cls] = sub
    return sub


def route_action(obj, connection):
    """Called on every action plugin the loader hands out: an async task's action (and
    gather_facts, which may start async jobs itself) with a spindle connection starts its
    module in the agent."""
    if obj is None or isinstance(obj, type) or getattr(obj, '_spindle_async_action', False):
        return obj
    task = getattr(obj, '_task', None)
    if not hasattr(connection, 'spindle_run_async'):
        return obj
    if not getattr(task, 'async_val', 0) and type(obj).__module__ not in ASYNC_BY_ITSELF:
        return obj
    obj.__class__ = async_class(type(obj))
    return obj
