"""Controller side of the prototype: take the AnsiballZ wrapper that Ansible built (stock
module_common.modify_module, i.e. `in_data` of a pipelined `_low_level_execute_command`) and
turn it into a spindle run_module request + the payload files.  Standard library only.

Handles both wrapper dialects:
  v2 = ansible-core 2.19/2.20/2.21  (`_ansiballz_main(zip_data=..., params=..., ...)` call at the end)
  v1 = ansible-core <= 2.18         (`ZIPDATA = '...'`, `ANSIBALLZ_PARAMS = '...'` in `_ansiballz_main()`)
"""

import ast
import base64
import hashlib
import io
import re
import shlex
import zipfile


class NotAnsiballz(Exception):
    pass


def _lit(node):
    return ast.literal_eval(node)


def _tb_lines(tree, need_module=True):
    """Line numbers of the three wrapper frames a stock traceback shows (`File "<stdin>", line N`):
    the top-level `_ansiballz_main(` call, its `invoke_module(` call, and the
    `runpy.run_module(` (v1) / `_loader.run_module(` (v2) call inside invoke_module."""
    lines = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == '_ansiballz_main':
                lines['module'] = node.lineno
            elif isinstance(f, ast.Name) and f.id == 'invoke_module':
                lines['main'] = node.lineno
            elif isinstance(f, ast.Attribute) and f.attr == 'run_module':
                # the first one in the source is in invoke_module (debug() comes later)
                lines['invoke'] = min(node.lineno, lines.get('invoke', node.lineno))
    if not need_module:  # a template alone: its call comes after it
        return (
            lines
            if len(lines) == 2 and 'module' not in lines and 2 < lines['invoke'] < lines['main']
            else None
        )
    if len(lines) == 3 and 2 < lines['invoke'] < lines['main'] < lines['module']:
        return lines
    return None


#: The zip literal of a v2 wrapper's final call: most of the wrapper's bytes, base64 only.
_ZIP_LITERAL = re.compile(rb"\bzip_data=(['\"])([A-Za-z0-9+/=]*)\1")

_B64 = b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/='


def _zip_literal(src, start):
    """``(begin, end)`` of the first ``zip_data='<base64>'`` literal's content at or after
    ``start``, or None: what ``_ZIP_LITERAL`` finds, without a regex loop over ~200 KB."""
    i = src.find(b'zip_data=', start)
    if i < 0 or (i > 0 and (src[i - 1 : i].isalnum() or src[i - 1 : i] == b'_')):
        return None
    quote = src[i + 9 : i + 10]
    if quote not in (b"'", b'"'):
        return None
    begin = i + 10
    end = src.find(quote, begin)
    if end < 0 or src[begin:end].translate(None, _B64):
        return None
    return begin, end


def parse_wrapper(src):
    """The wrapper's metadata and zip. The zip literal (hundreds of KiB) is cut out before
    parsing, and the rest parsed: ast.parse of the whole wrapper took a few ms every task."""
    if b'_ANSIBALLZ_WRAPPER = True' not in src[:4096]:
        raise NotAnsiballz('not an AnsiballZ wrapper')
    tail = src.rfind(b'\nif __name__ == ')
    m = _ZIP_LITERAL.search(src, tail) if tail >= 0 else None
    if m:
        try:
            out = _parse(src[: m.start(2)] + src[m.end(2) :])
        except (SyntaxError, ValueError, KeyError, NotAnsiballz):
            out = {}
        if out.get('dialect') == 'v2' and out['zip'] == b'':
            out['zip'] = base64.b64decode(m.group(2))
            return out
    return _parse(src)


def read_wrapper(src, cache=None):
    """:func:`parse_wrapper`'s metadata without decoding the zip: ``zip_b64`` (the literal's
    base64 bytes) instead of ``zip``. Only the wrapper's last statement (the call carrying
    the module's arguments) is parsed each time; the template before it, the same for
    every module of one ansible-core, is parsed for its traceback lines once per ``cache``
    (a :class:`spindle_ansible.plancache.PlanCache`, entry ``tpl-<sha256>``). Other wrappers
    (ansible-core 2.18's) get :func:`parse_wrapper` (``zip`` decoded)."""
    if b'_ANSIBALLZ_WRAPPER = True' not in src[:4096]:
        raise NotAnsiballz('not an AnsiballZ wrapper')
    tail = src.rfind(b'\nif __name__ == ')
    span = _zip_literal(src, tail) if tail >= 0 else None
    if span:
        try:
            out = _v2_call(ast.parse(src[tail : span[0]] + src[span[1] :]))
        except (SyntaxError, ValueError, KeyError, NotAnsiballz):
            out = None
        if out is not None and out['zip'] == b'':
            call_line = out.pop('call_line')
            out['tb_lines'] = _template_lines(src[:tail], cache, src.count(b'\n', 0, tail) + call_line)
            del out['zip']
            out['zip_b64'] = src[span[0] : span[1]]
            return out
    out = _read_v1(src, cache)
    return out if out is not None else parse_wrapper(src)


_V1_ZIP = b'\n    ZIPDATA = '
_V1_PARAMS = b'\n    ANSIBALLZ_PARAMS = '


def _read_v1(src, cache):
    """A v1 wrapper (ansible-core 2.18) read as :func:`read_wrapper` reads v2: the zip and the
    parameters (each one line) are cut out, and what is left, the same for every task of one
    module, is parsed once per ``cache`` (entry ``v1-<sha256>``). None if it is not one."""
    z = src.find(_V1_ZIP)
    p = src.find(_V1_PARAMS)
    if z < 0 or p < z:
        return None
    z += len(_V1_ZIP)
    quote = src[z : z + 1]
    end = src.find(quote, z + 1) if quote in (b"'", b'"') else -1
    if end < 0 or src[z + 1 : end].translate(None, _B64):
        return None
    p += len(_V1_PARAMS)
    line_end = src.find(b'\n', p)
    try:
        params = ast.literal_eval(src[p:line_end].decode('utf-8'))
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(params, str):
        return None
    template = src[: z + 1] + src[end:p] + b"''" + src[line_end:]
    key = hashlib.sha256(template).hexdigest()
    meta = cache.get('v1', key) if cache is not None else None
    if meta is None:
        try:
            meta = _parse(template)
        except (SyntaxError, ValueError, KeyError, NotAnsiballz):
            return None
        if meta.get('dialect') != 'v1' or meta.pop('zip', None) != b'' or meta.pop('params', None) != '':
            return None
        if cache is not None:
            cache.put('v1', key, meta)
    return dict(meta, params=params, zip_b64=src[z + 1 : end])


def _template_lines(template, cache, module_line):
    """:func:`_tb_lines` of a wrapper whose template (all before its last statement) is
    ``template`` and whose ``_ansiballz_main(`` call is on line ``module_line``."""
    key = hashlib.sha256(template).hexdigest()
    lines = cache.get('tpl', key) if cache is not None else None
    if lines is None:
        found = _tb_lines(ast.parse(template), need_module=False)
        lines = dict((k, found[k]) for k in ('main', 'invoke')) if found else {}
        if cache is not None and lines:
            cache.put('tpl', key, lines)
    if not lines or not 2 < lines['invoke'] < lines['main'] < module_line:
        return None
    return dict(lines, module=module_line)


def _v2_call(tree):
    """The metadata in a v2 wrapper's last statement (``if __name__ == "__main__":
    _ansiballz_main(zip_data=..., ...)``), with ``call_line``; None if it is not one."""
    last = tree.body[-1]
    if not (isinstance(last, ast.If) and last.body and isinstance(last.body[0], ast.Expr)):
        return None
    call = last.body[0].value
    if not (
        isinstance(call, ast.Call) and getattr(call.func, 'id', None) == '_ansiballz_main' and call.keywords
    ):
        return None
    kw = dict((k.arg, k.value) for k in call.keywords)
    return dict(
        dialect='v2',
        call_line=call.lineno,
        ansible_module=_lit(kw['ansible_module']),
        module_fqn=_lit(kw['module_fqn']),
        profile=_lit(kw['profile']),
        rlimit_nofile=_lit(kw['rlimit_nofile']),
        params=_lit(kw['params']),
        extensions=_lit(kw['extensions']),
        zip=base64.b64decode(_lit(kw['zip_data'])),
    )


def _parse(src):
    tree = ast.parse(src)
    # v2: if __name__ == "__main__": _ansiballz_main(zip_data=..., ...)
    v2 = _v2_call(tree)
    if v2 is not None:
        del v2['call_line']
        v2['tb_lines'] = _tb_lines(tree)
        return v2
    # v1: def _ansiballz_main(): ... ZIPDATA = '...'; ANSIBALLZ_PARAMS = '...'
    main = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == '_ansiballz_main']
    if not main:
        raise NotAnsiballz('unknown AnsiballZ dialect')
    out = dict(dialect='v1', profile='legacy', extensions={}, rlimit_nofile=0, tb_lines=_tb_lines(tree))
    for node in ast.walk(main[0]):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == 'ZIPDATA':
                out['zip'] = base64.b64decode(_lit(node.value))
            elif name == 'ANSIBALLZ_PARAMS' and isinstance(node.value, ast.Constant):
                out['params'] = _lit(node.value)
            elif name == 'requested_soft':  # ANSIBALLZ_RLIMIT_TEMPLATE: min(existing_hard, N)
                out['rlimit_nofile'] = _lit(node.value.args[1])
        elif isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'run_module':
            for k in node.keywords:
                if k.arg == 'mod_name':
                    out['module_fqn'] = _lit(k.value)
        elif isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'mkdtemp':
            # tempfile.mkdtemp(prefix='ansible_' + 'NAME' + '_payload_')
            out['ansible_module'] = _lit(node.keywords[0].value.left.right)
    if b'import coverage' in src:
        out['extensions'] = {'_coverage': 'v1'}  # coverage template present: not supported in-agent
    return out


def unpack(zip_bytes):
    """zip -> {path inside the zip: bytes} (directories skipped)."""
    zf = zipfile.ZipFile(io.BytesIO(zip_bytes))
    return dict((n, zf.read(n)) for n in zf.namelist() if not n.endswith('/'))


def manifest(files):
    return dict((p, hashlib.sha256(b).hexdigest()) for p, b in files.items())


def split_module_command(cmd):
    """The command `_low_level_execute_command` got for a pipelined module, before become:
    `[NAME=VALUE ...] interpreter [args]` (shell.env_prefix + build_module_command).
    Here we also accept the captured final form `/bin/sh -c '... && sleep 0'`."""
    argv = shlex.split(cmd)
    if len(argv) == 3 and argv[1] == '-c':
        inner = argv[2]
        if inner.endswith(' && sleep 0'):
            inner = inner[: -len(' && sleep 0')]
        argv = shlex.split(inner)
    env = {}
    while argv and '=' in argv[0] and argv[0].split('=', 1)[0].replace('_', 'a').isalnum():
        k, v = argv.pop(0).split('=', 1)
        env[k] = v
    return env, argv
