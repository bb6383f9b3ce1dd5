"""The controller wakes when a task result arrives, instead of polling for it every millisecond.

Ansible's controller process waits for its workers' results in
``StrategyBase._wait_on_pending_results``: it looks at the result queue, and while results are
pending, sleeps ``internal_poll_interval`` (default 1 ms) and looks again. The results
themselves arrive on a thread of the same process (``results_thread_main``), which appends
each to ``strategy._results`` under ``strategy._results_lock``, already a
``threading.Condition`` that nothing waits on. So every task costs the controller one poll
per millisecond of the task's round trip (about 4% of a core for as long as any task runs,
measured with ``getrusage`` around a play that only waits), and the controller notices a
result up to a millisecond late.

Here the wait is on that condition: the results thread's append notifies it
(:class:`WakingResults`), and :func:`wait_on_pending_results` is Ansible's loop with the
sleep replaced by a wait on the condition (checked and entered under its lock, so no
notification is lost). The loop still checks for dead workers and for a terminated run at
least every :func:`check_interval` (``internal_poll_interval``, at least 50 ms), since a
worker that dies sends no result. The compat patch ``result-wake`` installs it; it is Ansible's
own loop (the same in 2.18-2.21) and changes nothing but how the controller waits.
"""

from __future__ import annotations

import collections
import re

#: While no result comes, the loop checks its workers (and a terminated run) this often at
#: least (s); every ``internal_poll_interval`` when that is longer.
MIN_CHECK = 0.05


class WakingResults(collections.deque):
    """A strategy's result queue whose ``append`` (by the results thread, which holds
    ``cond``'s lock) notifies the controller waiting on ``cond``."""

    def __init__(self, items, cond):
        super().__init__(items)
        self.cond = cond

    def append(self, item):
        super().append(item)
        try:
            self.cond.notify_all()
        except RuntimeError:  # appended without the lock (not Ansible's results thread)
            pass


def waking(strategy):
    """``strategy``'s result queue as a :class:`WakingResults` (swapped in once, under its lock,
    so the results thread appends either to the old queue before or to this one after)."""
    results = strategy._results
    if type(results) is not WakingResults:
        with strategy._results_lock:
            results = strategy._results = WakingResults(strategy._results, strategy._results_lock)
    return results


def check_interval():
    from ansible import constants as C

    return max(C.DEFAULT_INTERNAL_POLL_INTERVAL, MIN_CHECK)


_DOCSTRING = re.compile(r"('{3}|\"{3}).*?\1", re.S)

#: Ansible's loop that :func:`wait_on_pending_results` stands in for, as in ansible-core 2.18-2.21
#: (compared without its docstring, comments and layout: :func:`normal`).
ANSIBLE_LOOP = """
def _wait_on_pending_results(self, iterator):
    ret_results = []
    display.debug("waiting for pending results...")
    while self._pending_results > 0 and not self._tqm._terminated:
        if self._tqm.has_dead_workers():
            raise AnsibleError("A worker was found in a dead state")
        results = self._process_pending_results(iterator)
        ret_results.extend(results)
        if self._pending_results > 0:
            time.sleep(C.DEFAULT_INTERNAL_POLL_INTERVAL)
    display.debug("no more pending results, returning what we have")
    return ret_results
"""


def normal(source):
    """``source`` without its first docstring, its comments and its layout."""
    source = _DOCSTRING.sub('', source, count=1)
    return ' '.join(re.sub(r'#[^\n]*', '', source).split())


def wait_on_pending_results(self, iterator):
    """``StrategyBase._wait_on_pending_results`` (ansible-core 2.18-2.21) waiting on the results
    condition instead of sleeping between polls."""
    from ansible.errors import AnsibleError
    from ansible.utils.display import Display

    display = Display()
    waking(self)
    cond = self._results_lock
    timeout = check_interval()
    ret_results = []
    display.debug('waiting for pending results...')
    while self._pending_results > 0 and not self._tqm._terminated:
        if self._tqm.has_dead_workers():
            raise AnsibleError('A worker was found in a dead state')
        ret_results.extend(self._process_pending_results(iterator))
        if self._pending_results > 0:
            with cond:
                if not self._results:
                    cond.wait(timeout)
    display.debug('no more pending results, returning what we have')
    return ret_results
