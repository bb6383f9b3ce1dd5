# spindle module runner, 30_async: async tasks, as Ansible's async_wrapper runs them
# One of the parts src/agent/modrun/*.py joined in name order into one source (one module,
# spindle_modrun) by transport::bootstrap; see 00_importer.py.

# --------------------------------------------------------------------------- async tasks

# An async task (`async: N`) runs as Ansible's async_wrapper (modules/async_wrapper.py, 2.18 to
# 2.21) runs it, minus the files: the job's status file is written where and as async_wrapper
# writes it (`<ANSIBLE_ASYNC_DIR>/<jid>`, first {"started", "finished", "ansible_job_id"}, then
# the module's result, each by a rename), in a detached process (own session, umask 022) that
# outlives the call, the agent and the connection, under a watcher that kills the module's
# process group at async_wrapper's check points and records "Timeout exceeded". Ansible's own
# async_status module (a normal module: it runs in the agent) reads it, in this run or a later.

#: Seconds the start waits for the job's first status file (async_wrapper: 25 x 0.1 s).
ASYNC_START_WAIT = 2.5
#: async_wrapper's watcher checks every 5 s (every limit/2 s for a limit up to 5 s).
ASYNC_STEP = 5.0


def filter_non_json_lines(data, blank_junk=True):
    """async_wrapper's ``_filter_non_json_lines`` (a copy of module_utils/json_utils.py):
    ``(json text, warnings)``; ValueError when there is no JSON object. ``blank_junk``: whether
    trailing blank lines count as junk (2.18-2.20 yes; 2.21 only lines with text)."""
    warnings_ = []
    lines = data.splitlines()
    for start, line in enumerate(lines):  # noqa: B007 (used after the loop, as in Ansible)
        line = line.strip()
        if line.startswith('{'):
            break
    else:
        raise ValueError('No start of json char found')
    lines = lines[start:]
    for reverse_end_offset, line in enumerate(reversed(lines)):  # noqa: B007 (used after)
        if line.strip().endswith('}'):
            break
    else:
        raise ValueError('No end of json char found')
    if reverse_end_offset > 0:
        trailing_junk = lines[len(lines) - reverse_end_offset :]
        if blank_junk or any(j.strip() for j in trailing_junk):
            warnings_.append('Module invocation had junk after the JSON data: %s' % '\n'.join(trailing_junk))
    lines = lines[: (len(lines) - reverse_end_offset)]
    return ('\n'.join(lines), warnings_)


def job_write(path, info):
    """async_wrapper's ``jwrite``: the status file replaced whole (written beside, renamed)."""
    tmp = path + '.tmp'
    f = open(tmp, 'w')
    try:
        f.write(json.dumps(info))
    finally:
        f.close()
        os.rename(tmp, path)


def _module_text(data):
    # async_wrapper reads the module's output with subprocess' text mode: UTF-8 with
    # surrogateescape, universal newlines
    return data.decode('utf-8', 'surrogateescape').replace('\r\n', '\n').replace('\r', '\n')


def job_result(outdata, stderr, jid, cmd, ints=False, blank_junk=True):
    """The final status-file content for a module that printed ``outdata``/``stderr`` (text),
    exactly as async_wrapper's ``_run_module`` builds it."""
    failed = 1 if ints else True
    try:
        filtered, json_warnings = filter_non_json_lines(outdata, blank_junk)
        result = json.loads(filtered)
        if json_warnings:
            module_warnings = result.get('warnings', [])
            if not isinstance(module_warnings, list):
                module_warnings = [module_warnings]
            module_warnings.extend(json_warnings)
            result['warnings'] = module_warnings
        if stderr:
            result['stderr'] = stderr
        return result
    except OSError as e:
        result = {"failed": failed, "cmd": cmd, "msg": str(e), "outdata": outdata, "stderr": stderr}
    except Exception:
        result = {
            "failed": failed,
            "cmd": cmd,
            "data": outdata,
            "stderr": stderr,
            "msg": traceback.format_exc(),
        }
    result['ansible_job_id'] = jid
    return result


def _notice(fd, msg):
    try:
        os.write(fd, json.dumps(msg).encode('utf-8') + b'\n')
    except OSError:
        pass  # the starter gave up waiting: the job runs on


def _close_fds(keep):
    """Close every descriptor above 2 but ``keep``: a detached job must not hold the agent's
    channel (the ssh session would wait for it) nor anything else of the agent's."""
    try:
        fds = [int(n) for n in os.listdir('/proc/self/fd')]
    except (OSError, ValueError):
        fds = range(3, min(os.sysconf('SC_OPEN_MAX'), 65536))
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _wait_child(pid, seconds):
    """Whether child ``pid`` ended (reaped) within ``seconds`` (with SIGCHLD blocked)."""
    deadline = time.monotonic() + seconds
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if hasattr(signal, 'sigtimedwait'):
            signal.sigtimedwait([signal.SIGCHLD], left)
        else:
            time.sleep(min(left, 0.1))


def watch_job(pid, limit, path, step=ASYNC_STEP, grace=1.0):
    """async_wrapper's watcher: checks at each ``step`` (limit/2 when ``step`` >= limit); at the
    first check at or past ``limit`` with the module still running, kills its process group,
    waits ``grace`` and records the timeout. Returns True when it killed the job."""
    # SIGCHLD blocked: it stays pending for sigtimedwait (a check of the child comes first)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    try:
        return _watch(pid, limit, path, step, grace)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _watch(pid, limit, path, step, grace):
    remaining = limit
    if remaining != 0 and step >= remaining:
        step = remaining / 2.0
    if _wait_child(pid, step):
        return False
    while True:
        remaining -= step
        if remaining <= 0:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            time.sleep(grace)
            job_write(path, {'msg': 'Timeout exceeded', 'failed': True, 'child_pid': pid})
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
            return True
        if _wait_child(pid, step):
            return False


def _async_module(req, files, job, jid, path, wfd, template_out, template_err, disk):
    """The job's module process: first status, the start notice, the module, its result."""
    ints = job.get('ints')
    job_write(path, {"started": 1 if ints else True, "finished": 0 if ints else False, "ansible_job_id": jid})
    _notice(wfd, {'started': True})
    os.close(wfd)
    payload = Payload(files, ROOT)
    top = None
    if disk:  # may re-execute itself: its payload on disk, as stock's wrapper has it
        for n in list(_KEPT):
            sys.modules.pop(n, None)
        _KEPT.clear()
        top, payload.root = _payload_on_disk(req, files)
    else:
        _validate_kept(payload)
    name = str(req.get('module_fqn') or 'module').rsplit('.', 1)[-1]
    cmd = 'AnsiballZ_%s.py' % name  # stock names the module file it ran (a temp path)
    out_fd, err_fd = _capture_file(), _capture_file()
    try:
        execute(req, payload, out_fd, err_fd, template_out, template_err)
    finally:
        if top is not None:
            import shutil

            shutil.rmtree(top, ignore_errors=True)
    # from here on, what async_wrapper does in its own process once the module exited
    for fd in (0, 1, 2):
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)
    os.umask(0o022)
    outdata, stderr = _module_text(_read_all(out_fd)), _module_text(_read_all(err_fd))
    job_write(path, job_result(outdata, stderr, jid, cmd, ints, job.get('blank_junk', True)))


def _async_child(req, files, job, wfd, active, template_out, template_err, disk):
    """In the first child (async_wrapper's own process): the job id, the status directory,
    then a new session and the watcher, which starts the module process."""
    _reset_imports_after_fork()
    if active is not None:
        active.restore()  # an in-process run's changes, in this copy only
    for k, v in (req.get('env') or {}).items():  # async_wrapper runs with the task's environment
        os.environ[k] = v
    if req.get('cwd'):
        os.chdir(req['cwd'])
    jid = '%s.%d' % (job['jid'], os.getpid())
    jobdir = os.path.expanduser(os.environ.get('ANSIBLE_ASYNC_DIR', '~/.ansible_async'))
    job_path = os.path.join(jobdir, jid)
    try:
        os.makedirs(jobdir, exist_ok=True)
    except Exception as e:
        _notice(
            wfd,
            {
                'error': {
                    "failed": 1 if job.get('ints') else True,
                    "msg": "could not create directory: %s - %s" % (jobdir, e),
                    "exception": traceback.format_exc(),
                }
            },
        )
        return
    try:
        path = os.path.join(os.getcwd(), job_path)  # the module may change directory
    except OSError:
        path = job_path
    _notice(wfd, {'jid': jid, 'results_file': job_path})
    os.setsid()
    os.umask(0o022)
    if os.fork():
        return  # (this process exits: the watcher is an orphan in its own session)
    _close_fds((wfd,))
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        _async_module(req, files, job, jid, path, wfd, template_out, template_err, disk)
        return
    os.close(wfd)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    watch_job(pid, job['limit'], path)


def _read_notices(fd, deadline):
    info = {}
    buf = b''
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return info
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return info
        chunk = os.read(fd, 65536)
        if not chunk:
            return info
        buf += chunk
        while b'\n' in buf:
            line, buf = buf.split(b'\n', 1)
            msg = json.loads(line.decode('utf-8'))
            info.update(msg)
            if 'error' in msg or 'started' in msg:
                return info


def start_async(req, files, job, template_out=None, template_err=None, disk=False):
    """Start the module as an async job (``job``: ``jid`` prefix, ``limit`` seconds, ``ints``
    for 2.18's 1/0 flags, ``blank_junk``) and return at once, as async_wrapper does, with
    ``rc``/``stdout``/``stderr`` of async_wrapper's own output (the job id and status file)."""
    template_out = template_out or sys.__stdout__
    template_err = template_err or sys.__stderr__
    t0 = time.perf_counter()
    rfd, wfd = os.pipe()
    with _FORK_LOCK:
        active = _ACTIVE
        pid = os.fork()
    if pid == 0:  # child: never returns into the agent
        try:
            os.close(rfd)
            _async_child(req, files, job, wfd, active, template_out, template_err, disk)
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        info = _read_notices(rfd, time.monotonic() + ASYNC_START_WAIT)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)  # the first child ends as soon as the watcher is forked
    ints = job.get('ints')
    if 'error' in info:
        rc, out = 1, info['error']
    elif 'results_file' in info:
        rc, out = (
            0,
            {
                "failed": 0 if ints else False,
                "started": 1 if ints else True,
                "finished": 0 if ints else False,
                "ansible_job_id": info['jid'],
                "results_file": info['results_file'],
                "_ansible_suppress_tmpdir_delete": True,
            },
        )
    else:
        rc, out = (
            1,
            {
                "failed": 1 if ints else True,
                "msg": "FATAL ERROR: the async job did not start (process %d)" % pid,
            },
        )
    return {
        'rc': rc,
        'stdout': (json.dumps(out) + '\n').encode('utf-8'),
        'stderr': b'',
        'seconds': time.perf_counter() - t0,
        'report': {},
    }
