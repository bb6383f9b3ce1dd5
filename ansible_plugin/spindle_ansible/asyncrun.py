"""Async tasks (``async: N``, any ``poll``) started in the target's agent.

Stock Ansible runs an async task from files: ``_execute_module(wrap_async=True)`` makes a remote
temp dir, uploads the module and ``async_wrapper``, and runs a new Python that daemonizes and
writes the job's status file, which ``async_status`` (a normal module) reads. With a spindle
connection the agent starts the module from its cached code in a detached job that does what
async_wrapper does (``src/agent/modrun/30_async.py``, "async tasks": status file where and as
async_wrapper writes it, Ansible's time limit, the same started reply), so Ansible's own polling
and a later ``async_status`` (this run or a later one) work unchanged, in the agent.

The patch of Ansible internals this needs is :mod:`spindle_ansible.compat`'s
``async-execute-module`` (applied per action object, never to Ansible's classes): the action
loader hands out an action whose task is async with its class swapped for a subclass whose ``_execute_module`` runs the stock method with
``wrap_async=False`` (so Ansible builds the pipelined AnsiballZ wrapper, with
``ANSIBLE_ASYNC_DIR`` in its environment, as it does for every async task) while the connection
knows the job's id prefix and time limit; then it does what stock does after an async start
(``changed`` is true). Verified on ansible-core 2.18.19, 2.19.14, 2.20.10 and 2.21.5
(``VERIFIED``). Anything else takes the stock path, and says why (a warning once per host and
reason, counted in ``spindle stats``): another ansible-core version, ANSIBLE_KEEP_REMOTE_FILES,
an action that made a remote temp dir first, and modules the agent does not start as a job
(old-style, WANT_JSON and binary ones, which it runs only synchronously:
:mod:`spindle_ansible.filemod`; non-Python ones; ``spindle_task_isolation: off``), which the
connection refuses before anything runs (:class:`AsyncStock`; for a file module, before its
temp dir exists), and the stock method then runs them with async_wrapper.
"""

import inspect

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
            why = (
                'ansible-core %s is not a version spindle starts async tasks in the agent on '
                '(verified: %s)' % (version, ', '.join(VERIFIED))
            )
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


def route_action(obj, connection):
    """The ``async-execute-module`` patch (it lives in :mod:`spindle_ansible.compat`)."""
    from spindle_ansible import compat

    return compat.route_async(obj, connection)
