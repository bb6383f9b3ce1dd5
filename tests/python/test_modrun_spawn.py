"""The module runner's spawn part (src/agent/modrun/15_spawn.py): subprocess.Popen drops
AnsibleModule.run_command's preexec_fn when it is exactly Ansible's and its umask is false (so
CPython can vfork), keeps every other preexec_fn, and a command still sees the umask a task
asked for. The real basic.py's function is checked by ansible_plugin/tests (it needs
ansible-core)."""

import os
import subprocess
import sys
import unittest

import agent_source

MODRUN = agent_source.load_modrun('spindle_modrun_spawn_test')


class AnsibleModule(object):
    """The shape of ansible.module_utils.basic.AnsibleModule.run_command's preexec, 2.18-2.21."""

    def run_command(self, umask=None):
        def preexec():
            if umask:
                os.umask(umask)

        return preexec


class Spawn(unittest.TestCase):
    def test_only_ansibles_no_op_preexec_is_recognised(self):
        self.assertTrue(MODRUN._noop_preexec(AnsibleModule().run_command()))
        self.assertTrue(MODRUN._noop_preexec(AnsibleModule().run_command(umask=0)))
        self.assertFalse(MODRUN._noop_preexec(AnsibleModule().run_command(umask=0o077)))

        class Other(object):
            def run_command(self, umask=None):
                def preexec():
                    if umask:
                        os.umask(umask)

                return preexec

        self.assertFalse(MODRUN._noop_preexec(Other().run_command()))  # another qualname

        class AnsibleModule2(object):
            def run_command(self, umask=None):
                def preexec():
                    os.umask(umask or 0)

                return preexec

        AnsibleModule2.__qualname__ = 'AnsibleModule'
        AnsibleModule2.run_command.__qualname__ = 'AnsibleModule.run_command'
        fn = AnsibleModule2().run_command()
        fn.__qualname__ = 'AnsibleModule.run_command.<locals>.preexec'
        self.assertFalse(MODRUN._noop_preexec(fn))  # the same name, other code
        self.assertFalse(MODRUN._noop_preexec(lambda: None))
        self.assertFalse(MODRUN._noop_preexec(os.getpid))

    def test_popen_passes_on_every_other_preexec(self):
        seen = []
        real = MODRUN._REAL_POPEN_INIT
        MODRUN._REAL_POPEN_INIT = lambda self, *a, **kw: seen.append(kw.get('preexec_fn'))
        self.addCleanup(setattr, MODRUN, '_REAL_POPEN_INIT', real)
        other = AnsibleModule().run_command(umask=0o077)
        MODRUN._popen_init(None, ['true'], preexec_fn=AnsibleModule().run_command())
        MODRUN._popen_init(None, ['true'], preexec_fn=other)
        MODRUN._popen_init(None, ['true'])
        self.assertEqual(seen, [None, other, None])

    def test_installed_once_and_commands_see_the_umask_asked_for(self):
        self.assertTrue(getattr(subprocess.Popen.__init__, 'spindle_spawn', False))
        MODRUN.install_spawn()
        self.assertTrue(getattr(subprocess.Popen.__init__, 'spindle_spawn', False))
        code = 'import os; print(oct(os.umask(0)))'
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        for umask, want in ((None, '0o22'), (0o077, '0o77')):
            p = subprocess.Popen(
                [sys.executable, '-c', code],
                stdout=subprocess.PIPE,
                preexec_fn=AnsibleModule().run_command(umask=umask),
            )
            out, _ = p.communicate()
            self.assertEqual((p.returncode, out.decode().strip()), (0, want))


if __name__ == '__main__':
    unittest.main()
