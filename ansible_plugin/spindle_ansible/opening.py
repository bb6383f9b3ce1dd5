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

Only for a host's first module task in the run: the ``spindle`` callback counts, in the
controller, the tasks each host is given that reach the target (:func:`started`; Ansible sends
``v2_runner_on_start`` just before it forks the task's worker), and the worker inherits the
count (:func:`wanted`: this task is the first). Without the callback
(``spindle_linear``/``spindle_free`` alone) nothing is counted and every module task asks: one
daemon-local request, answered without touching the target.
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

_STARTED = {}  # inventory host name -> tasks given to it that reach the target (controller)


def _short(action):
    for prefix in ('ansible.builtin.', 'ansible.legacy.'):
        if action.startswith(prefix):
            return action[len(prefix) :]
    return action


def started(host_name, action):
    """In the controller, as a task starts on ``host_name``: note it unless ``action`` runs
    in the controller only."""
    if _short(action or '') not in CONTROLLER_ONLY:
        _STARTED[host_name] = _STARTED.get(host_name, 0) + 1


def wanted(host_name):
    """In a worker: whether this host's stream should be opened ahead of the module build."""
    return _STARTED.get(host_name, 0) <= 1  # (1: this task's own start, counted before the fork)
