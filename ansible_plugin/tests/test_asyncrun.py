"""Unit tests of spindle_ansible.asyncrun: which actions get the in-agent async start, what the
overridden ``_execute_module`` asks of Ansible's own (``wrap_async=False`` with the job on the
connection, then ``changed``), and the stock async_wrapper path with its reason when the agent
cannot start the module or the ansible-core version is not a verified one.

Run: python3 -m unittest discover -s ansible_plugin/tests -v    (from the repository root)
"""

import os
import sys
import types
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from spindle_ansible import asyncrun  # noqa: E402


class Conn(object):
    def __init__(self):
        self._shell = types.SimpleNamespace(tmpdir=None)
        self._spindle_async = None
        self._spindle_async_reason = None

    def spindle_run_async(self):
        return True


class Action(object):
    """Stands in for an Ansible action: records what its _execute_module was asked."""

    refuse_native = False  # the connection's answer to a native start: raise AsyncStock

    def __init__(self, conn, async_val=10):
        self._connection = conn
        self._task = types.SimpleNamespace(async_val=async_val)
        self.calls = []

    def _is_pipelining_enabled(self, module_style, wrap_async=False):
        return True

    def _execute_module(
        self,
        module_name=None,
        module_args=None,
        tmp=None,
        task_vars=None,
        persist_files=False,
        delete_remote_tmp=None,
        wrap_async=False,
    ):
        conn = self._connection
        self.calls.append(
            {
                'wrap_async': wrap_async,
                'job': conn._spindle_async,
                'reason': conn._spindle_async_reason,
                'module_name': module_name,
            }
        )
        if conn._spindle_async is not None:
            if self.refuse_native:
                raise asyncrun.AsyncStock('old-style module')
            conn._spindle_async['started'] = True
        return {'ansible_job_id': 'j1.2', 'started': True}


class AsyncRunTests(unittest.TestCase):
    def setUp(self):
        asyncrun._SHAPE[:] = []
        self.addCleanup(asyncrun._SHAPE.clear)

    def routed(self, async_val=10, conn=None):
        conn = conn if conn is not None else Conn()
        return asyncrun.route_action(Action(conn, async_val), conn)

    def test_only_async_tasks_on_spindle_are_routed(self):
        self.assertIs(type(self.routed(0)), Action)
        self.assertIs(type(self.routed(10, conn=types.SimpleNamespace())), Action)
        a = self.routed(10)
        self.assertTrue(issubclass(type(a), Action) and type(a) is not Action)
        self.assertIs(type(asyncrun.route_action(a, a._connection)), type(a))  # once
        self.assertIs(type(self.routed(5)), type(a))  # one subclass per class

    def test_gather_facts_is_routed_without_async(self):
        facts = type('ActionModule', (Action,), {'__module__': 'ansible.plugins.action.gather_facts'})
        conn = Conn()
        a = asyncrun.route_action(facts(conn, 0), conn)
        self.assertIsNot(type(a), facts)
        a._execute_module(module_name='ansible.legacy.setup', wrap_async=True)
        self.assertEqual(a.calls[0]['job']['limit'], 0)  # async_wrapper: killed at its first check

    def test_native_start(self):
        a = self.routed(7)
        out = a._execute_module(module_name='ansible.legacy.command', wrap_async=True)
        self.assertEqual(len(a.calls), 1)
        call = a.calls[0]
        self.assertFalse(call['wrap_async'])
        self.assertEqual(call['module_name'], 'ansible.legacy.command')
        self.assertEqual(call['job']['limit'], 7)
        self.assertRegex(call['job']['jid'], r'^j[0-9]{1,12}$')
        self.assertIn('ints', call['job'])
        self.assertTrue(out['changed'])  # as stock's _execute_module after an async start
        self.assertIsNone(a._connection._spindle_async)

    def test_not_async_is_untouched(self):
        a = self.routed(7)
        out = a._execute_module(wrap_async=False)
        self.assertEqual(a.calls, [{'wrap_async': False, 'job': None, 'reason': None, 'module_name': None}])
        self.assertNotIn('changed', out)

    def test_module_the_agent_does_not_run_takes_async_wrapper(self):
        a = self.routed(7)
        a.refuse_native = True
        a._execute_module(wrap_async=True)
        self.assertEqual([c['wrap_async'] for c in a.calls], [False, True])
        self.assertIsNone(a.calls[1]['job'])
        self.assertEqual(a.calls[1]['reason'], 'old-style module')
        self.assertIsNone(a._connection._spindle_async_reason)
        self.assertIsNone(a._connection._spindle_async)

    def test_temp_dir_made_first_takes_async_wrapper(self):
        a = self.routed(7)
        a._connection._shell.tmpdir = '/tmp/ansible-tmp-1'
        a._execute_module(wrap_async=True)
        self.assertEqual(
            [(c['wrap_async'], c['reason']) for c in a.calls],
            [(True, 'the action made a remote temp dir first')],
        )

    def test_unverified_version_takes_async_wrapper(self):
        saved = asyncrun._version
        asyncrun._version = lambda: '2.99.1'
        self.addCleanup(setattr, asyncrun, '_version', saved)
        a = self.routed(7)
        a._execute_module(wrap_async=True)
        self.assertEqual(len(a.calls), 1)
        self.assertTrue(a.calls[0]['wrap_async'])
        self.assertIn('ansible-core 2.99.1 is not a version', a.calls[0]['reason'])

    def test_dialect(self):
        saved = asyncrun._version
        self.addCleanup(setattr, asyncrun, '_version', saved)
        for version, want in (
            ('2.18.19', {'ints': True, 'blank_junk': True}),
            ('2.19.14', {'ints': False, 'blank_junk': True}),
            ('2.20.10', {'ints': False, 'blank_junk': True}),
            ('2.21.5', {'ints': False, 'blank_junk': False}),
        ):
            asyncrun._version = lambda v=version: v
            self.assertEqual(asyncrun.job_dialect(), want, version)


if __name__ == '__main__':
    unittest.main()
