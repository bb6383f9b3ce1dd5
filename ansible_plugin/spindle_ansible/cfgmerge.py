"""Putting spindle's lines into an ansible.cfg that already has a ``[defaults]`` section.

Appending what ``python -m spindle_ansible`` prints works for a file without one. Most real
ansible.cfg files have one, often with ``callbacks_enabled`` (profile_tasks, timer) or their own
``callback_plugins``: appended, the lines make a second ``[defaults]`` and Ansible refuses the
file ("section 'defaults' already exists"). ``python -m spindle_ansible --merge FILE`` edits
the file instead, line by line, so the user's comments, order and other sections stay:

* ``callbacks_enabled`` gains ``spindle`` (comma list); ``callback_plugins``,
  ``connection_plugins`` and ``strategy_plugins`` gain this package's directory (``:`` list);
  ``bin_ansible_callbacks`` becomes ``True``; a key not there is added at the end of
  ``[defaults]``, a file without ``[defaults]`` gets the section;
* a key's continuation lines (an INI value may go on over indented lines) become one line;
  an inline ``;`` comment stays after the value;
* a second ``[defaults]`` that holds only spindle's lines (the printed lines appended to a
  file that had one: the error above) is folded into the first;
* merging again changes nothing; the result must parse as Ansible parses it
  (``configparser`` with ``;`` inline comments, strict), else nothing is written.

The file is replaced atomically (its mode kept) after a copy of the original is saved as
``FILE.bak``. Kept in the standard library: the edit is small and must not reformat a file a
team keeps under version control (``configparser`` writes back without comments).
"""

import configparser
import os
import re
import tempfile

_SECTION = re.compile(r'\s*\[([^\]]+)\]')
_KEY = re.compile(r'([A-Za-z0-9_.\-]+)\s*[=:]\s*(.*)$')
_INLINE = re.compile(r'\s;')


def wanted(plugins):
    """``(key, value, kind)`` spindle needs in ``[defaults]`` for the plugins under ``plugins``."""
    return [
        ('callback_plugins', os.path.join(plugins, 'callback'), 'path'),
        ('callbacks_enabled', 'spindle', 'list'),
        ('bin_ansible_callbacks', 'True', 'true'),
        ('connection_plugins', os.path.join(plugins, 'connection'), 'path'),
        ('strategy_plugins', os.path.join(plugins, 'strategy'), 'path'),
    ]


class MergeError(Exception):
    """The file cannot be merged (it does not parse before or after); nothing was written."""


def _split_comment(value):
    m = _INLINE.search(value)
    if m is None:
        return value.rstrip(), ''
    return value[: m.start()].rstrip(), value[m.start() :].rstrip()


def _merged(kind, old, want):
    """The value of a key that has ``old``, with ``want`` in it; None when ``old`` has it."""
    if kind == 'list':
        items = [x.strip() for x in old.replace('\n', ',').split(',') if x.strip()]
        return None if want in items else ', '.join(items + [want])
    if kind == 'path':
        items = [x.strip() for x in old.replace('\n', ':').split(os.pathsep) if x.strip()]
        same = os.path.realpath(want)
        if any(os.path.realpath(os.path.expanduser(x)) == same for x in items):
            return None
        return os.pathsep.join(items + [want])
    # 'true': a boolean Ansible reads as true
    return None if old.strip().lower() in ('true', 'yes', 'on', '1', 'y', 't') else want


def _check(text, name):
    parser = configparser.ConfigParser(inline_comment_prefixes=(';',))
    try:
        parser.read_string(text, source=name)
    except configparser.Error as e:
        raise MergeError('%s does not parse as Ansible reads it: %s' % (name, str(e).splitlines()[0]))


def _appended_blocks(lines, keys):
    """``lines`` without the ``[defaults]`` sections after the first that hold only spindle's
    lines as printed (its keys with its values) and comments: what appending them to a file
    with ``[defaults]`` made, which Ansible refuses. A section with anything of the user's in
    it stays (the merge then refuses the file). Also the line numbers (1-based) removed."""
    ours = dict((k, v) for k, v, _ in keys)

    def spindles(line):
        # a line as printed: one of our keys with exactly our value
        m = _KEY.match(line)
        return bool(m) and ours.get(m.group(1).lower()) == _split_comment(m.group(2))[0]

    heads = [i for i, line in enumerate(lines) if _is_defaults(line)]
    removed = []
    for head in reversed(heads[1:]):
        end = head + 1
        while end < len(lines) and not _is_section(lines[end]):
            end += 1
        body = [x for x in lines[head + 1 : end] if x.strip() and x.strip()[0] not in '#;']
        if body and all(spindles(x) for x in body):
            while head > 0 and not lines[head - 1].strip():
                head -= 1
            del lines[head:end]
            removed.append(head + 1)
    return lines, sorted(removed)


def _is_section(line):
    """A section header (at the line's start: an indented one continues a value)."""
    return not line[:1].isspace() and bool(_SECTION.match(line))


def _is_defaults(line):
    return _is_section(line) and _SECTION.match(line).group(1).strip() == 'defaults'


def merge(text, keys, name='ansible.cfg'):
    """``(new text, changes)``: ``text`` with ``keys`` (from :func:`wanted`) in its
    ``[defaults]``; ``changes`` says what changed, one line per key (empty: nothing). A second
    ``[defaults]`` holding only spindle's lines (appended to a file that had one) is folded
    into the first."""
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith('\n'):
        lines[-1] += '\n'
    lines, removed = _appended_blocks(lines, keys)
    changes = [
        'removed the [defaults] section appended at line %d (spindle\'s lines, merged into the first)' % n
        for n in removed
    ]
    if ''.join(lines).strip():
        _check(''.join(lines), name)
    start = None
    for i, line in enumerate(lines):
        if _is_defaults(line):
            start = i
            break
    if start is None:
        block = ['[defaults]\n'] + ['%s = %s\n' % (k, v) for k, v, _ in keys]
        if lines and lines[-1].strip():
            block.insert(0, '\n')
        changes.append('[defaults]: added, with %s' % ', '.join(k for k, _, _ in keys))
        return ''.join(lines + block), changes
    end = len(lines)
    for i in range(start + 1, len(lines)):
        if _is_section(lines[i]):
            end = i
            break
    # key -> (first line, line after its continuation lines) within [defaults]
    found = {}
    i = start + 1
    while i < end:
        m = _KEY.match(lines[i])
        if m is None:
            i += 1
            continue
        j = i + 1
        while j < end and lines[j][:1] in (' ', '\t') and lines[j].strip():
            j += 1
        found.setdefault(m.group(1).lower(), (i, j))
        i = j
    edits = []  # (first, after, replacement lines)
    added = []
    for key, want, kind in keys:
        if key not in found:
            added.append('%s = %s\n' % (key, want))
            changes.append('%s: added (%s)' % (key, want))
            continue
        i, j = found[key]
        first = _KEY.match(lines[i])
        value, comment = _split_comment(first.group(2))
        rest = [_split_comment(x.strip())[0] for x in lines[i + 1 : j]]
        old = '\n'.join([value] + rest)
        new = _merged(kind, old, want)
        if new is None:
            continue
        edits.append(
            (i, j, ['%s = %s%s\n' % (first.group(1), new, (' ' + comment.strip()) if comment else '')])
        )
        changes.append('%s: %s -> %s' % (key, ' '.join(old.split()), new))
    if added:
        at = end
        while at > start + 1 and not lines[at - 1].strip():
            at -= 1
        edits.append((at, at, added))
    for i, j, new_lines in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[i:j] = new_lines
    out = ''.join(lines)
    _check(out, name)
    return out, changes


def merge_file(path, keys):
    """Merge ``keys`` into the file at ``path`` (made when missing): the changes made (empty:
    nothing to do, the file untouched). The original is kept as ``path + '.bak'``."""
    try:
        with open(path) as f:
            text = f.read()
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        text, mode = '', 0o644
    new, changes = merge(text, keys, path)
    if not changes:
        return changes
    directory = os.path.dirname(os.path.abspath(path))
    if text:
        with open(path + '.bak', 'w') as f:
            f.write(text)
    fd, tmp = tempfile.mkstemp(prefix='.ansible.cfg.', dir=directory)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(new)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return changes


def ansible_cfg_in_use(environ=None, cwd=None):
    """The ansible.cfg Ansible would read here (``ANSIBLE_CONFIG``, ``./ansible.cfg``,
    ``~/.ansible.cfg``, ``/etc/ansible/ansible.cfg``, the first that exists), or None."""
    env = os.environ if environ is None else environ
    given = env.get('ANSIBLE_CONFIG')
    candidates = [given] if given else []
    candidates += [
        os.path.join(cwd or os.getcwd(), 'ansible.cfg'),
        os.path.expanduser('~/.ansible.cfg'),
        '/etc/ansible/ansible.cfg',
    ]
    for c in candidates:
        if c and os.path.isdir(c):
            c = os.path.join(c, 'ansible.cfg')
        if c and os.path.isfile(c):
            return c
    return None


def has_defaults(path):
    """Whether the file at ``path`` has a ``[defaults]`` section (appending would repeat it)."""
    try:
        with open(path) as f:
            return any(_is_defaults(line) for line in f)
    except OSError:
        return False
