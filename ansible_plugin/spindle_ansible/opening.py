"""Opening a host's stream while Ansible builds the host's first module of the run.

A run's first module task to a host pays two things one after the other: Ansible building
the module (``_configure_module``: for the run's first use of a module, its AnsiballZ with
``recursive_finder``, ~0.1-0.2 s of CPU) and then spindle opening the host's stream (ssh,
key exchange, agent bootstrap: ~0.3 s, mostly waiting on the network and the target). The
daemon's ``open`` op (docs/api.md) starts the stream and answers at once, so the worker asks
for it just before the build and the two overlap; on a persistent daemon's idle stream it
starts the liveness check instead. The agent starts under the interpreter the host's
variables name, exactly as the module call would start it (the connection's ``_spec``), so
this never starts an agent the task would not have started.

Only for a host's first module task in the run: the controller notes, for each host, the
first task it is given that reaches the target (:func:`started`, before the task's worker
forks: from the ``spindle`` callback's ``v2_runner_on_start``, which Ansible sends just before
the fork, and from the ``spindle_linear``/``spindle_free`` strategies' ``_queue_task``, see
``compat.strategy_queued``), and the worker, which inherits the note, asks only when its task
is that one (:func:`wanted`). Where nothing was noted (another Ansible sending the callback
after the fork), the worker asks: one daemon-local request, answered without touching the
target. Bounded: one entry per inventory host.
"""

#: Actions that run in the controller only: a host's first task of this kind does not count
#: as its first that reaches the target.
CONTROLLER_ONLY = frozenset(
    (
        'add_host',
        'assert',
        'debug',
        'fail',
        'group_by',
        'import_role',
        'import_tasks',
        'include_role',
        'include_tasks',
        'include_vars',
        'meta',
        'pause',
        'set_fact',
        'set_stats',
    )
)

_FIRST = {}  # inventory host name -> _uuid of its first task that reaches the target (controller)


def _short(action):
    for prefix in ('ansible.builtin.', 'ansible.legacy.'):
        if action.startswith(prefix):
            return action[len(prefix) :]
    return action


def started(host_name, action, task_uuid):
    """In the controller, as a task is queued for ``host_name``: note it if it is the host's
    first that reaches the target (``action`` not one of :data:`CONTROLLER_ONLY`). Called by
    the callback and the strategy alike: the second call for one task changes nothing."""
    if host_name not in _FIRST and _short(action or '') not in CONTROLLER_ONLY:
        _FIRST[host_name] = task_uuid


def wanted(host_name, task_uuid):
    """In a worker: whether this host's stream should be opened ahead of this task's module
    build (the host's first task that reaches it, or nothing noted)."""
    first = _FIRST.get(host_name)
    return first is None or first == task_uuid
