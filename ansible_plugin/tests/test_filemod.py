"""Unit tests of spindle_ansible.filemod and compat's ``file-module`` patch: which module runs
get a placeholder temp dir instead of Ansible's mkdir, why the others keep the stock path, and
that the placeholder never outlives the ``_execute_module`` call.

Run: python3 -m unittest discover -s ansible_plugin/tests -v    (from the repository root)
"""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from spindle_ansible import compat, filemod  # noqa: E402


class Shell(object):
    def __init__(self):
        self.tmpdir = None

    @staticmethod
    def _generate_temp_dir_name():
        return 'ansible-tmp-1.5-42-7'


class Conn(object):
    refusal = None

    def __init__(self):
        self._shell = Shell()
        self._spindle_file_reason = None
        self.begun = []
        self.ended = []
        self.seen_reason = None

    def spindle_file_module(self):
        return self.refusal

    def spindle_file_module_begin(self, placeholder, base, name):
        self.begun.append((placeholder, base, name))

    def spindle_file_module_end(self, placeholder):
        self.ended.append(placeholder)


class Bits(object):
    def __init__(self, style, data):
        self.module_style, self.b_module_data = style, data


class Action(object):
    """What ActionBase._execute_module does, as far as the patch sees it."""

    style = 'old'
    data = b'#!/bin/sh\necho {}\n'
    tuple_218 = False
    unprivileged = False
    remote_tmp = '~/.ansible/tmp'
    made_first = False

    def __init__(self, conn):
        self._connection = conn
        self.made = []

    def get_shell_option(self, option, default=None):
        return {'remote_tmp': self.remote_tmp, 'system_tmpdirs': ['/var/tmp', '/tmp']}.get(option, default)

    def _is_become_unprivileged(self):
        return self.unprivileged

    def _make_tmp_path(self, remote_user=None):
        self.made.append('real')
        self._connection._shell.tmpdir = '/home/u/.ansible/tmp/ansible-tmp-real'
        return self._connection._shell.tmpdir

    def _configure_module(self, module_name, module_args, task_vars):
        if self.tuple_218:
            return (self.style, '#!/bin/sh', self.data, __file__)
        return Bits(self.style, self.data), __file__

    def _execute_module(self, module_name=None, module_args=None, tmp=None, task_vars=None, wrap_async=False):
        conn = self._connection
        if self.made_first:
            self._make_tmp_path()
        self._configure_module(module_name, module_args, task_vars)
        if self.style != 'new' and conn._shell.tmpdir is None:
            self._make_tmp_path()
        self.tmp_at_run = conn._shell.tmpdir
        conn.seen_reason = conn._spindle_file_reason
        return {'ok': True}


class FileModulePatch(unittest.TestCase):
    def setUp(self):
        compat._checked['file-module'] = True  # (the shape is Ansible's: checked in test_shape)

    def action(self, **attrs):
        conn = Conn()
        action = type('ActionModule', (Action,), attrs)(conn)
        conn.spindle_file_module = conn.spindle_file_module  # (as the spindle connection has it)
        self.assertIs(compat.route_file_module(action, conn), action)
        self.assertTrue(type(action).__name__.startswith('SpindleFile'))
        self.assertEqual(type(action).__module__, Action.__module__)
        return action, conn

    def test_a_file_module_gets_a_placeholder_that_ends_with_the_call(self):
        for tuple_218 in (False, True):
            for style in filemod.FILE_STYLES:
                action, conn = self.action(style=style, tuple_218=tuple_218)
                self.assertEqual(action._execute_module(module_name='m'), {'ok': True})
                self.assertEqual(action.made, [])
                ph = filemod.PLACEHOLDER_ROOT + '/ansible-tmp-1.5-42-7'
                self.assertEqual(action.tmp_at_run, ph)
                self.assertEqual(conn.begun, [(ph, '~/.ansible/tmp', 'ansible-tmp-1.5-42-7')])
                self.assertEqual(conn.ended, [ph])
                self.assertIsNone(conn._shell.tmpdir)

    def test_an_unprivileged_become_user_gets_a_system_tmpdir(self):
        action, conn = self.action(unprivileged=True)
        action._execute_module()
        self.assertEqual(conn.begun[0][1], '/var/tmp')
        action, conn = self.action(unprivileged=True, remote_tmp='/tmp/')
        action._execute_module()
        self.assertEqual(conn.begun[0][1], '/tmp')

    def test_new_style_and_async_are_left_alone(self):
        action, conn = self.action(style='new')
        action._execute_module()
        self.assertEqual((conn.begun, action.made), ([], []))
        action, conn = self.action()
        action._execute_module(wrap_async=True)
        self.assertEqual((conn.begun, action.made, conn.seen_reason), ([], ['real'], None))

    def test_the_stock_path_says_why(self):
        for attrs, refusal, why in (
            ({'made_first': True}, None, 'Ansible does not pipeline this task'),
            ({'action_made': True}, None, 'the action made its remote temp dir first'),
            ({'data': b'x' * (filemod.MAX_MODULE + 1)}, None, 'over 16 MiB'),
            ({}, 'spindle_task_isolation is off', 'spindle_task_isolation is off'),
        ):
            action_made = attrs.pop('action_made', False)
            action, conn = self.action(**attrs)
            conn.refusal = refusal
            if action_made:
                action._make_tmp_path()
            action._execute_module()
            self.assertEqual(conn.begun, [])
            self.assertIn('real', action.made)
            self.assertIn(why, conn.seen_reason)
            self.assertIsNone(conn._spindle_file_reason)  # said during the call only

    def test_a_new_style_module_ansible_does_not_pipeline_says_so(self):
        action, conn = self.action(style='new', made_first=True)
        action._execute_module()
        self.assertEqual(conn.seen_reason, filemod.NOT_PIPELINED)
        self.assertIsNone(conn._spindle_file_reason)
        action, conn = self.action(style='new')
        action._execute_module()
        self.assertIsNone(conn.seen_reason)

    def test_shape(self):
        del compat._checked['file-module']
        self.assertEqual(compat._shape('file-module'), [])


if __name__ == '__main__':
    unittest.main()
