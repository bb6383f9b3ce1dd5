"""A doas become plugin for the become tests (ansible-core ships none: community.general's
doas is the usual one). It follows that plugin's behaviour: ``doas [-n] -u USER SHELL -c
CMD``, ``-n`` when no password is given, the password asked for on the terminal."""

from __future__ import annotations

DOCUMENTATION = """
    name: doas
    short_description: Do As user (test copy of community.general.doas's behaviour)
    description:
        - Runs the command as another user with the doas utility.
    author: spindle
    options:
        become_user:
            description: User you 'become' to execute the task
            default: root
            vars:
              - name: ansible_become_user
            keyword:
              - name: become_user
        become_exe:
            description: doas executable
            default: doas
            vars:
              - name: ansible_become_exe
            keyword:
              - name: become_exe
        become_flags:
            description: Options to pass to doas
            default: ''
            vars:
              - name: ansible_become_flags
            keyword:
              - name: become_flags
        become_pass:
            description: Password for doas
            required: False
            vars:
              - name: ansible_become_password
              - name: ansible_become_pass
"""

import re

from ansible.module_utils.common.text.converters import to_bytes
from ansible.plugins.become import BecomeBase


class BecomeModule(BecomeBase):
    name = 'doas'

    # The password is asked for on the terminal: Ansible must not pipe the module on stdin
    # (the ssh plugin then runs the command on a tty; spindle's agent gives it a pty).
    pipelining = False

    fail = ('Permission denied', 'Authentication failed')
    missing = ('Authorization required', 'Authentication required')

    def check_password_prompt(self, b_output):
        return bool(re.search(rb'doas \(.*\) password:|Password:', to_bytes(b_output)))

    def build_become_command(self, cmd, shell):
        super(BecomeModule, self).build_become_command(cmd, shell)
        if not cmd:
            return cmd
        self.prompt = True
        exe = self.get_option('become_exe') or 'doas'
        flags = self.get_option('become_flags') or ''
        if not self.get_option('become_pass') and '-n' not in flags.split():
            flags += ' -n'
        user = self.get_option('become_user')
        user = '-u %s' % user if user else ''
        success_cmd = self._build_success_command(cmd, shell, noexe=True)
        executable = getattr(shell, 'executable', shell.SHELL_FAMILY)
        return '%s %s %s %s -c %s' % (exe, flags, user, executable, success_cmd)
