"""Where a run's module tasks ran (in an agent, forked, or on Ansible's stock command path, with
the reasons), from the daemon's ``stats`` -> ``paths`` counters: said at the end of a run by the
``spindle`` callback and the spindle strategies (ARCHITECTURE rule 9: no silent slow path)."""

import json
import os

from spindle_ansible.client import Client, SpindleError


def snapshot(socket_path):
    """The daemon's module-path counters, or None."""
    try:
        client = Client(socket_path)
        try:
            return client.stats(call_timeout=5.0).get('paths')
        finally:
            client.close()
    except (OSError, SpindleError, ValueError):
        return None


def summary(before, after):
    """(counts, text) of the module runs between two snapshots."""
    before = before or {}
    counts = {}
    for key in ('in_agent', 'forked', 'stock'):
        counts[key] = int(after.get(key, 0)) - int(before.get(key, 0))
    reasons = {}
    old = before.get('stock_reasons') or {}
    for reason, n in (after.get('stock_reasons') or {}).items():
        n = int(n) - int(old.get(reason, 0))
        if n > 0:
            reasons[reason] = n
    counts['stock_reasons'] = reasons
    total = counts['in_agent'] + counts['forked'] + counts['stock']
    text = (
        "spindle: %d module task runs: %d in the agent, %d in a forked child of the agent, "
        "%d on Ansible's stock command path" % (total, counts['in_agent'], counts['forked'], counts['stock'])
    )
    if reasons:
        text += " (%s)" % "; ".join("%s: %d" % (r, n) for r, n in sorted(reasons.items()))
    return counts, text


def report(display, socket_path, before):
    """Say where the module runs since ``before`` went: at -v always, and at default verbosity
    when any ran on the stock path (each reason was also a warning once per host). With
    ``SPINDLE_PATHS_FILE``, the counts are also written there as JSON (tests, the bench)."""
    after = snapshot(socket_path) if socket_path else None
    if after is None:
        return None
    counts, text = summary(before, after)
    if counts['stock']:
        display.display(text, color='bright purple')
    else:
        display.v(text)
    out = os.environ.get('SPINDLE_PATHS_FILE')
    if out:
        with open(out, 'w') as f:
            json.dump(counts, f, sort_keys=True)
    return counts
