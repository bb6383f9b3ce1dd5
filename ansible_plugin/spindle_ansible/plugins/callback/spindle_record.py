"""Ansible callback ``spindle_record``: when SPINDLE_RECORD=path is set, write every host's
task results to that path as JSON, keeping what two runs of a playbook should agree on and
dropping timing and temp-path noise.  Used to compare stock Ansible with spindle."""

from __future__ import annotations

DOCUMENTATION = """
    name: spindle_record
    type: aggregate
    short_description: record per-host task results as JSON, for comparing two runs
    description:
        - When E(SPINDLE_RECORD) names a file, writes there, at the end of the playbook, a JSON
          list with one entry per host per task result (play, task, action, host, status and
          the result fields that two equal runs share), then one C(recap) entry per host.
        - Timing and temporary-path fields (delta, start, end, invocation, C(_ansible_*), diff
          extras) are left out.
    author: spindle
    version_added: historical
    requirements:
        - enable in configuration (callbacks_enabled = spindle_record)
"""

import json
import os

from ansible.plugins.callback import CallbackBase

#: result fields recorded (others are noise: timing, temp paths, huge fact sets)
KEEP = frozenset(
    (
        'rc',
        'stdout',
        'stderr',
        'stdout_lines',
        'stderr_lines',
        'msg',
        'changed',
        'failed',
        'skipped',
        'skip_reason',
        'false_condition',
        'checksum',
        'size',
        'mode',
        'state',
        'path',
        'dest',
        'owner',
        'group',
        'uid',
        'gid',
        'md5sum',
        'remote_checksum',
        'remote_md5sum',
        'censored',
        'cmd',
        'item',
        'ansible_loop_var',
        'module_stdout',
        'module_stderr',
        'status_code',
        'url',
        'failed_when_result',
        'unreachable',
        'rescued',
        'ignored',
        'content',
        'encoding',
        'source',
        'started',
        'finished',
    )
)
STAT_KEEP = frozenset(
    ('exists', 'isdir', 'isreg', 'islnk', 'mode', 'size', 'checksum', 'pw_name', 'gr_name', 'path')
)
DIFF_KEEP = frozenset(('before', 'after', 'before_header', 'after_header'))
DIFF_TIMES = frozenset(('atime', 'mtime', 'ctime'))
FACT_ACTIONS = frozenset(
    ('set_fact', 'ansible.builtin.set_fact', 'include_vars', 'ansible.builtin.include_vars')
)


def _diff(diff):
    if isinstance(diff, list):
        return [_diff(d) for d in diff]
    if isinstance(diff, dict):
        return {k: _no_times(v) for k, v in diff.items() if k in DIFF_KEEP}
    return diff


def _no_times(side):
    # the file module's diff states carry atime/mtime (run-dependent)
    if isinstance(side, dict):
        return {k: v for k, v in side.items() if k not in DIFF_TIMES}
    return side


def clean(result, action=None):
    """The comparable part of one module result (also applied to each loop item)."""
    out = {}
    for key, value in result.items():
        if key in KEEP:
            out[key] = value
        elif key == 'results' and isinstance(value, list):
            out[key] = [clean(r, action) if isinstance(r, dict) else r for r in value]
        elif key == 'stat' and isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if k in STAT_KEEP}
        elif key == 'diff':
            out[key] = _diff(value)
        elif key == 'ansible_facts' and action in FACT_ACTIONS:
            out[key] = value
    return out


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'spindle_record'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.path = os.environ.get('SPINDLE_RECORD')
        self.play = None
        self.records = []

    def _jsonable(self, value):
        return json.loads(json.dumps(value, default=str, sort_keys=True))

    def _add(self, result, status, **extra):
        if not self.path:
            return
        task = result._task
        action = getattr(task, 'action', None)
        raw = result._result if isinstance(result._result, dict) else {}
        entry = {
            'play': self.play,
            'task': task.get_name() if task is not None else None,
            'action': action,
            'host': result._host.get_name(),
            'status': status,
            'result': self._jsonable(clean(raw, action)),
        }
        if getattr(task, 'delegate_to', None):
            entry['delegated_to'] = task.delegate_to
        entry.update(extra)
        self.records.append(entry)

    def v2_playbook_on_play_start(self, play):
        self.play = play.get_name()

    def v2_runner_on_ok(self, result):
        self._add(result, 'changed' if result._result.get('changed') else 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._add(result, 'failed', ignored=bool(ignore_errors))

    def v2_runner_on_skipped(self, result):
        self._add(result, 'skipped')

    def v2_runner_on_unreachable(self, result):
        # The message is the transport's own wording (ssh's vs the daemon's): not compared.
        self._add(result, 'unreachable')
        if self.records and self.records[-1]['status'] == 'unreachable':
            self.records[-1]['result'].pop('msg', None)

    def v2_playbook_on_stats(self, stats):
        if not self.path:
            return
        for host in sorted(stats.processed.keys()):
            self.records.append(
                {'play': None, 'task': None, 'host': host, 'status': 'recap', 'result': stats.summarize(host)}
            )
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(self.records, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
