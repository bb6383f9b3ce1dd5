# spindle module runner, 15_spawn: how a module's commands start (vfork where Ansible's preexec does nothing)
# One of the parts src/agent/modrun/*.py joined in name order into one source (one module,
# spindle_modrun) by transport::bootstrap; see 00_importer.py.
#
# AnsibleModule.run_command (2.18-2.21) always hands subprocess.Popen a preexec_fn,
#
#     def preexec():
#         if umask:
#             os.umask(umask)
#
# which does nothing unless the task asked for a umask. Any preexec_fn makes CPython fork()
# where it would vfork() (3.10+ on Linux) and run Python in the child before exec. In a fresh
# python per task (stock Ansible) that costs little; in the agent, which is larger and lives
# on, every command task paid the page-table copy and, afterwards, a copy-on-write fault for
# each page the agent wrote. Measured (an ad hoc loop of Popen(["hostname"]) in a Python
# holding ~30 MB, this machine): 5.5 ms of the parent's CPU and 2.6 ms of the child's per
# command with the no-op preexec_fn, 0.45 ms and 0.9 ms without.
#
# So Popen drops a preexec_fn that is exactly that function with a false umask: same
# bytecode, names and constants as _ansible_preexec below, compiled by this same interpreter
# (line numbers aside), and its one free variable `umask` false. Anything else, a umask
# included, keeps its preexec_fn: behaviour is Ansible's, only the fork is cheaper.


def _ansible_preexec_shape():
    umask = None

    def preexec():
        if umask:
            os.umask(umask)

    code = preexec.__code__
    return code.co_code, code.co_names, code.co_consts, code.co_freevars


_PREEXEC_SHAPE = _ansible_preexec_shape()


def _noop_preexec(fn):
    """Whether ``fn`` is AnsibleModule.run_command's preexec with a false umask."""
    code = getattr(fn, '__code__', None)
    closure = getattr(fn, '__closure__', None)
    if code is None or not closure or len(closure) != 1:
        return False
    if getattr(fn, '__qualname__', '') != 'AnsibleModule.run_command.<locals>.preexec':
        return False
    if (code.co_code, code.co_names, code.co_consts, code.co_freevars) != _PREEXEC_SHAPE:
        return False
    try:
        return not closure[0].cell_contents
    except ValueError:  # an empty cell
        return False


_REAL_POPEN_INIT = subprocess.Popen.__init__


def _popen_init(self, *args, **kwargs):
    fn = kwargs.get('preexec_fn')
    if fn is not None and _noop_preexec(fn):
        kwargs['preexec_fn'] = None
    _REAL_POPEN_INIT(self, *args, **kwargs)


def install_spawn():
    """Once per process (the module runner's load): Popen drops Ansible's no-op preexec_fn."""
    if getattr(subprocess.Popen.__init__, 'spindle_spawn', False):
        return
    _popen_init.spindle_spawn = True
    subprocess.Popen.__init__ = _popen_init


install_spawn()
