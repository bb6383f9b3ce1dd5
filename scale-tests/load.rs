//! The scale driver's traffic: opening every target stream with `ping`, then a paced `exec`
//! load over a few pipelined client connections (a sender and a receiver thread each), with
//! every request id tracked so that lost, duplicated, cross-wired and wrongly-failed replies
//! are counted, and healthy-target latency recorded in an HDR histogram (microseconds).

use crate::shared::{self, FaultMode};
use base64::Engine as _;
use hdrhistogram::Histogram;
use serde_json::Value;
use spindle::api::{frame_message, MessageDecoder};
use spindle::client::Client;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One simulated target as the driver addresses it.
pub struct Target {
    /// `sim-N` or `sim-N-<mode>`.
    pub name: String,
    /// The connection spec, serialised once.
    pub spec: String,
    /// Its fault mode (the simulator socket it points at).
    pub mode: FaultMode,
    /// The agent's pid from the open phase's `ping` (0 = unknown); `ping` load checks that
    /// every reply comes from this process (a cross-wired reply would carry another pid).
    pub agent_pid: AtomicU32,
}

/// What each load request asks a target to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadOp {
    /// `exec ["sim", TOKEN]` to the fleet simulator (stdout starts with the token).
    SimExec,
    /// `ping`: one round trip through a real agent, in its process (no fork); the reply's
    /// `pid` must be the target's agent.
    Ping,
    /// `exec ["echo", TOKEN]` on a real agent: one fork+exec per request on the target side.
    Echo,
}

impl LoadOp {
    /// Parses `ping` / `echo` / `sim`.
    pub fn parse(s: &str) -> Result<LoadOp, String> {
        match s {
            "ping" => Ok(LoadOp::Ping),
            "echo" => Ok(LoadOp::Echo),
            "sim" => Ok(LoadOp::SimExec),
            _ => Err(format!("--op {s:?}: expected ping, echo or sim")),
        }
    }

    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            LoadOp::SimExec => "sim-exec",
            LoadOp::Ping => "ping",
            LoadOp::Echo => "echo",
        }
    }
}

/// `n` real agents over the `local` transport (`spindle` spawns `python3` for each); each is
/// its own stream because the stream key includes the name (`real-N`).
pub fn local_targets(n: usize, python: Option<&str>, connect_timeout: u64) -> Vec<Target> {
    (0..n)
        .map(|i| {
            let name = format!("real-{i}");
            let mut spec = serde_json::json!({"transport": "local", "name": name,
                "connect_timeout": connect_timeout});
            if let Some(p) = python {
                spec["python"] = p.into();
            }
            Target {
                name,
                spec: spec.to_string(),
                mode: FaultMode::Healthy,
                agent_pid: AtomicU32::new(0),
            }
        })
        .collect()
}

/// Builds `n` targets; `mix` fault fractions are assigned to whole targets by a seeded
/// shuffle (at least one target per listed fault with a nonzero fraction).
pub fn targets(n: usize, sim: &Path, mix: &[(FaultMode, f64)], seed: u64) -> Vec<Target> {
    let mut modes = vec![FaultMode::Healthy; n];
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = shared::Rng(seed ^ 0x7a67);
    for i in (1..n).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut next = 0;
    for (m, f) in mix {
        let want = ((n as f64 * f).round() as usize).max(usize::from(*f > 0.0));
        for _ in 0..want {
            if let Some(&i) = order.get(next) {
                modes[i] = *m;
                next += 1;
            }
        }
    }
    modes
        .into_iter()
        .enumerate()
        .map(|(i, mode)| {
            let (name, host) = match mode {
                FaultMode::Healthy => (format!("sim-{i}"), sim.display().to_string()),
                m => (
                    format!("sim-{i}-{}", m.name()),
                    format!("{}.{}", sim.display(), m.name()),
                ),
            };
            let spec = serde_json::json!({"transport": "unix", "host": host, "name": name});
            Target {
                name,
                spec: spec.to_string(),
                mode,
                agent_pid: AtomicU32::new(0),
            }
        })
        .collect()
}

/// Outcome of the open phase.
#[derive(Default)]
pub struct OpenResult {
    /// Streams whose `ping` succeeded.
    pub ok: usize,
    /// Failed pings by error kind.
    pub failures: BTreeMap<String, u64>,
    /// The first failure's text.
    pub first_failure: Option<String>,
    /// Ping round trips, microseconds.
    pub hist: Option<Histogram<u64>>,
}

/// Pings every target (target `i` over connection `i % clients`, up to `window` in flight per
/// connection) so that the daemon opens one stream per target.
pub fn open_all(sock: &Path, ts: &Arc<Vec<Target>>, clients: usize, window: usize) -> OpenResult {
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (sock, ts) = (sock.to_path_buf(), ts.clone());
            std::thread::spawn(move || open_some(&sock, &ts, c, clients, window))
        })
        .collect();
    let mut r = OpenResult {
        hist: Histogram::new(3).ok(),
        ..Default::default()
    };
    for h in handles {
        let Ok(part) = h.join() else { continue };
        r.ok += part.ok;
        for (k, v) in part.failures {
            *r.failures.entry(k).or_default() += v;
        }
        r.first_failure = r.first_failure.or(part.first_failure);
        if let (Some(a), Some(b)) = (r.hist.as_mut(), part.hist.as_ref()) {
            let _ = a.add(b);
        }
    }
    r
}

fn open_some(sock: &Path, ts: &[Target], c: usize, k: usize, window: usize) -> OpenResult {
    let mut r = OpenResult {
        hist: Histogram::new(3).ok(),
        ..Default::default()
    };
    let fail = |r: &mut OpenResult, kind: String, msg: String| {
        *r.failures.entry(kind).or_default() += 1;
        r.first_failure.get_or_insert(msg);
    };
    let mut cl = match Client::connect(sock) {
        Ok(cl) => cl,
        Err(e) => {
            fail(&mut r, "client".into(), e.to_string());
            return r;
        }
    };
    let mine: Vec<&Target> = ts.iter().skip(c).step_by(k).collect();
    let mut sent_at: HashMap<u64, (Instant, &Target)> = HashMap::new();
    let mut next = 0;
    while next < mine.len() || !sent_at.is_empty() {
        while next < mine.len() && sent_at.len() < window {
            let spec: Value = serde_json::from_str(&mine[next].spec).unwrap_or_default();
            match cl.send(serde_json::json!({"op": "ping", "target": spec})) {
                Ok(id) => sent_at.insert(id, (Instant::now(), mine[next])),
                Err(e) => return fail_rest(r, e.to_string(), mine.len() - next),
            };
            next += 1;
        }
        match cl.recv() {
            Ok(reply) => {
                let Some((t0, t)) = sent_at.remove(&reply.id) else {
                    fail(
                        &mut r,
                        "unknown_reply".into(),
                        format!("reply {}", reply.id),
                    );
                    continue;
                };
                match reply.result {
                    Ok(v) if v["pong"] == true && v["hello"]["hostname"].is_string() => {
                        r.ok += 1;
                        let pid = v["pid"].as_u64().unwrap_or(0);
                        t.agent_pid.store(u32::try_from(pid).unwrap_or(0), Relaxed);
                        if let Some(h) = r.hist.as_mut() {
                            let _ = h.record(t0.elapsed().as_micros() as u64);
                        }
                    }
                    Ok(v) => fail(&mut r, "bad_pong".into(), v.to_string()),
                    Err(spindle::client::ClientError::Api {
                        kind,
                        host,
                        message,
                    }) => fail(&mut r, kind.clone(), format!("{host}: {kind}: {message}")),
                    Err(e) => fail(&mut r, "client".into(), e.to_string()),
                }
            }
            Err(e) => return fail_rest(r, e.to_string(), sent_at.len() + mine.len() - next),
        }
    }
    r
}

fn fail_rest(mut r: OpenResult, msg: String, n: usize) -> OpenResult {
    *r.failures.entry("client".into()).or_default() += n as u64;
    r.first_failure.get_or_insert(msg);
    r
}

/// Load parameters.
#[derive(Clone)]
pub struct LoadCfg {
    /// Requests per second per stream.
    pub rate: f64,
    /// Seconds of load.
    pub duration: f64,
    /// Client connections.
    pub clients: usize,
    /// `call_timeout` of every request, seconds.
    pub call_timeout: f64,
    /// Seed shared with the simulator (decides which calls it fails).
    pub seed: u64,
    /// The simulator's fail rate.
    pub fail_rate: f64,
    /// base64 characters of stdin sent to slow-reader targets (to back their socket up).
    pub slow_stdin_b64: usize,
    /// What each request does.
    pub op: LoadOp,
}

struct Pending {
    target: u32,
    sent: Instant,
    expect: Option<&'static str>,
}

/// State a connection's sender and receiver share, plus live counters for progress lines.
#[derive(Default)]
pub struct Live {
    /// Requests written.
    pub sent: AtomicU64,
    /// Replies read.
    pub replies: AtomicU64,
    /// Replies that were not what the target's mode calls for (any problem).
    pub problems: AtomicU64,
    /// Largest healthy latency since the last progress line, microseconds.
    pub max_us: AtomicU64,
}

struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    last_id: AtomicU64,
}

/// Per-mode tallies.
#[derive(Default, Clone, serde::Serialize)]
pub struct ModeTally {
    /// Targets of this mode.
    pub targets: usize,
    /// Requests sent to them.
    pub requests: u64,
    /// Replies by outcome (`ok` or the error kind).
    pub outcomes: BTreeMap<String, u64>,
    /// Replies whose outcome was not the expected one.
    pub wrong: u64,
}

/// Everything the load phase measured.
pub struct LoadResult {
    /// Healthy-target request latency, microseconds.
    pub hist: Histogram<u64>,
    /// Requests sent.
    pub sent: u64,
    /// Replies received (matched to a request).
    pub replies: u64,
    /// Requests that never got a reply.
    pub lost: u64,
    /// Second replies to one id.
    pub duplicates: u64,
    /// Replies to ids never sent.
    pub unknown: u64,
    /// OK replies whose stdout was not the request's own token (cross-wired).
    pub mismatched: u64,
    /// Replies with the wrong outcome for their target's mode.
    pub wrong: u64,
    /// Tallies per mode.
    pub modes: BTreeMap<FaultMode, ModeTally>,
    /// First few problems, for the report.
    pub samples: Vec<String>,
    /// Worst lag of the sender behind its schedule, milliseconds.
    pub max_send_lag_ms: f64,
    /// Seconds from the first send to the end of the drain.
    pub elapsed: f64,
    /// Seconds the senders ran.
    pub send_secs: f64,
}

#[derive(Default)]
struct RecvPart {
    hist: Option<Histogram<u64>>,
    replies: u64,
    duplicates: u64,
    unknown: u64,
    mismatched: u64,
    wrong: u64,
    outcomes: BTreeMap<(FaultMode, String), u64>,
    wrong_by_mode: BTreeMap<FaultMode, u64>,
    samples: Vec<String>,
}

/// Runs the paced `exec` load and waits for every reply (up to `call_timeout` + 3 s after the
/// last send). `live` feeds progress lines.
pub fn run_load(
    sock: &Path,
    ts: Arc<Vec<Target>>,
    cfg: &LoadCfg,
    live: Arc<Live>,
) -> Result<LoadResult, String> {
    let t0 = Instant::now() + Duration::from_millis(50);
    let mut conns = Vec::new();
    for c in 0..cfg.clients {
        let s = UnixStream::connect(sock).map_err(|e| format!("connect: {e}"))?;
        let r = s.try_clone().map_err(|e| e.to_string())?;
        let sh = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            last_id: AtomicU64::new(0),
        });
        let (ts2, sh2, live2, cfg2) = (ts.clone(), sh.clone(), live.clone(), cfg.clone());
        let rx = std::thread::spawn(move || receive(r, c, &ts2, &sh2, &live2, &cfg2));
        let (ts2, sh2, live2, cfg2) = (ts.clone(), sh.clone(), live.clone(), cfg.clone());
        let tx = std::thread::spawn(move || send(s, c, t0, &ts2, &sh2, &live2, &cfg2));
        conns.push((sh, tx, rx));
    }
    let mut modes: BTreeMap<FaultMode, ModeTally> = BTreeMap::new();
    for t in ts.iter() {
        modes.entry(t.mode).or_default().targets += 1;
    }
    let mut max_lag = 0f64;
    let mut senders_done = Vec::new();
    for (sh, tx, rx) in conns {
        let (lag, per_mode, stream) = tx.join().map_err(|_| "sender panicked")?;
        max_lag = max_lag.max(lag);
        for (m, n) in per_mode {
            modes.entry(m).or_default().requests += n;
        }
        senders_done.push((sh, rx, stream));
    }
    let send_secs = t0.elapsed().as_secs_f64();
    let drain_end = Instant::now() + Duration::from_secs_f64(cfg.call_timeout + 3.0);
    while Instant::now() < drain_end && senders_done.iter().any(|(sh, _, _)| !lock(sh).is_empty()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let mut res = LoadResult {
        hist: Histogram::new(3).map_err(|e| e.to_string())?,
        sent: live.sent.load(Relaxed),
        replies: 0,
        lost: 0,
        duplicates: 0,
        unknown: 0,
        mismatched: 0,
        wrong: 0,
        modes,
        samples: Vec::new(),
        max_send_lag_ms: max_lag * 1000.0,
        elapsed,
        send_secs,
    };
    for (sh, rx, stream) in senders_done {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let part = rx.join().map_err(|_| "receiver panicked")?;
        let left = std::mem::take(&mut *lock(&sh));
        res.lost += left.len() as u64;
        for (id, p) in left.iter().take(5) {
            let name = &ts[p.target as usize].name;
            res.samples.push(format!("lost: request {id} to {name}"));
        }
        if let Some(h) = &part.hist {
            let _ = res.hist.add(h);
        }
        res.replies += part.replies;
        res.duplicates += part.duplicates;
        res.unknown += part.unknown;
        res.mismatched += part.mismatched;
        res.wrong += part.wrong;
        for ((m, k), n) in part.outcomes {
            *res.modes
                .entry(m)
                .or_default()
                .outcomes
                .entry(k)
                .or_default() += n;
        }
        for (m, n) in part.wrong_by_mode {
            res.modes.entry(m).or_default().wrong += n;
        }
        for s in part.samples {
            if res.samples.len() < 20 {
                res.samples.push(s);
            }
        }
    }
    Ok(res)
}

fn lock(sh: &Shared) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
    sh.pending.lock().unwrap_or_else(|p| p.into_inner())
}

/// How early a request may be sent: senders wake at most about once per millisecond and send
/// everything due by then in one write (latency is measured from the actual write).
const SLACK: Duration = Duration::from_millis(1);

type SendOut = (f64, BTreeMap<FaultMode, u64>, UnixStream);

fn send(
    mut s: UnixStream,
    c: usize,
    t0: Instant,
    ts: &[Target],
    sh: &Shared,
    live: &Live,
    cfg: &LoadCfg,
) -> SendOut {
    let n = ts.len();
    let mine: Vec<usize> = (c..n).step_by(cfg.clients.max(1)).collect();
    let period = 1.0 / cfg.rate;
    let phase: Vec<f64> = mine.iter().map(|&i| period * i as f64 / n as f64).collect();
    let slow_stdin = "A".repeat(cfg.slow_stdin_b64 / 4 * 4);
    let (mut k, mut idx, mut max_lag) = (0u64, 0usize, 0f64);
    let mut per_mode: BTreeMap<FaultMode, u64> = BTreeMap::new();
    let mut batch = Vec::new();
    let (mut id, mut counted) = (0u64, 0u64);
    if mine.is_empty() {
        return (0.0, per_mode, s);
    }
    loop {
        let due = period * k as f64 + phase[idx];
        if due >= cfg.duration {
            break;
        }
        let now = Instant::now();
        let at = t0 + Duration::from_secs_f64(due);
        if at > now + SLACK {
            std::thread::sleep(at - now);
            continue;
        }
        // Everything due within SLACK goes out in one write (never an empty batch: no spin).
        batch.clear();
        let now = Instant::now();
        let mut guard = lock(sh);
        while batch.len() < 256 * 1024 {
            let due = period * k as f64 + phase[idx];
            if due >= cfg.duration || t0 + Duration::from_secs_f64(due) > now + SLACK {
                break;
            }
            max_lag = max_lag.max(now.saturating_duration_since(t0).as_secs_f64() - due);
            let t = &ts[mine[idx]];
            id += 1;
            let token = format!("{c}-{id}");
            let expect = match t.mode {
                FaultMode::Healthy if shared::call_fails(cfg.seed, &token, cfg.fail_rate) => {
                    Some("remote")
                }
                m => m.expected_kind(),
            };
            let extra = if t.mode == FaultMode::SlowReader {
                format!(",\"stdin_b64\":\"{slow_stdin}\"")
            } else {
                String::new()
            };
            let body = match cfg.op {
                LoadOp::Ping => format!(
                    "{{\"id\":{id},\"op\":\"ping\",\"target\":{},\"call_timeout\":{}}}",
                    t.spec, cfg.call_timeout
                ),
                LoadOp::SimExec | LoadOp::Echo => format!(
                    "{{\"id\":{id},\"op\":\"exec\",\"target\":{},\"argv\":[\"{}\",\"{token}\"],\"call_timeout\":{}{extra}}}",
                    t.spec,
                    if cfg.op == LoadOp::Echo { "echo" } else { "sim" },
                    cfg.call_timeout
                ),
            };
            frame_message(&mut batch, body.as_bytes());
            guard.insert(
                id,
                Pending {
                    target: mine[idx] as u32,
                    sent: now,
                    expect,
                },
            );
            *per_mode.entry(t.mode).or_default() += 1;
            idx += 1;
            if idx == mine.len() {
                idx = 0;
                k += 1;
            }
        }
        sh.last_id.store(id, Relaxed);
        drop(guard);
        if s.write_all(&batch).is_err() {
            break;
        }
        live.sent.fetch_add(id - counted, Relaxed);
        counted = id;
    }
    (max_lag, per_mode, s)
}

fn receive(
    mut r: UnixStream,
    c: usize,
    ts: &[Target],
    sh: &Shared,
    live: &Live,
    cfg: &LoadCfg,
) -> RecvPart {
    let mut p = RecvPart {
        hist: Histogram::new(3).ok(),
        ..Default::default()
    };
    let mut dec = MessageDecoder::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => return p,
            Ok(n) => n,
        };
        dec.push(&buf[..n]);
        let now = Instant::now();
        while let Ok(Some(body)) = dec.next_message() {
            handle_reply(&body, c, ts, sh, live, cfg, now, &mut p);
        }
    }
}

fn problem(p: &mut RecvPart, live: &Live, s: String) {
    live.problems.fetch_add(1, Relaxed);
    if p.samples.len() < 20 {
        p.samples.push(s);
    }
}

#[allow(clippy::too_many_arguments)]
fn handle_reply(
    body: &[u8],
    c: usize,
    ts: &[Target],
    sh: &Shared,
    live: &Live,
    cfg: &LoadCfg,
    now: Instant,
    p: &mut RecvPart,
) {
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    let Some(id) = v["id"].as_u64() else {
        p.unknown += 1;
        return problem(p, live, format!("reply without id: {v}"));
    };
    let Some(pend) = lock(sh).remove(&id) else {
        if id != 0 && id <= sh.last_id.load(Relaxed) {
            p.duplicates += 1;
            return problem(p, live, format!("duplicate reply to {id}: {v}"));
        }
        p.unknown += 1;
        return problem(p, live, format!("reply to unknown id {id}: {v}"));
    };
    p.replies += 1;
    live.replies.fetch_add(1, Relaxed);
    let t = &ts[pend.target as usize];
    let outcome = if v["ok"] == true {
        "ok".to_string()
    } else {
        v["error"]["kind"].as_str().unwrap_or("?").to_string()
    };
    *p.outcomes.entry((t.mode, outcome.clone())).or_default() += 1;
    let want = pend.expect.unwrap_or("ok");
    // A target that stops reading first times calls out; once its outbound queue passes the
    // daemon's bound, new calls are refused with `busy` (bounded memory): both are right.
    let busy_ok = t.mode == FaultMode::SlowReader && outcome == "busy";
    if outcome != want && !busy_ok {
        p.wrong += 1;
        *p.wrong_by_mode.entry(t.mode).or_default() += 1;
        let msg = format!("{}: wanted {want}, got {outcome}: {}", t.name, v);
        return problem(p, live, msg);
    }
    if outcome == "ok" && cfg.op == LoadOp::Ping {
        let (want, got) = (
            t.agent_pid.load(Relaxed) as u64,
            v["result"]["pid"].as_u64(),
        );
        if v["result"]["pong"] != true || (want != 0 && got != Some(want)) {
            p.mismatched += 1;
            return problem(
                p,
                live,
                format!(
                    "{}: ping {id} answered by pid {got:?}, agent is {want}",
                    t.name
                ),
            );
        }
    } else if outcome == "ok" {
        let out = v["result"]["stdout_b64"].as_str().unwrap_or("");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(out)
            .unwrap_or_default();
        let token = format!("{c}-{id}\n");
        if !raw.starts_with(token.as_bytes()) {
            p.mismatched += 1;
            let got = String::from_utf8_lossy(&raw[..raw.len().min(40)]).into_owned();
            return problem(
                p,
                live,
                format!("{}: reply to {id} carries {got:?}", t.name),
            );
        }
    }
    if t.mode == FaultMode::Healthy {
        let us = now.saturating_duration_since(pend.sent).as_micros() as u64;
        if let Some(h) = p.hist.as_mut() {
            let _ = h.record(us.max(1));
        }
        live.max_us.fetch_max(us, Relaxed);
    }
}

/// A client that sends `exec`s (answered after `delay_ms`) to `targets` and disconnects
/// before the replies come; then checks with a new client that the daemon and those targets
/// still answer. Returns a JSON report.
pub fn client_disconnect(sock: &PathBuf, targets: &[&Target], delay_ms: u64) -> Value {
    let sent = (|| -> std::io::Result<usize> {
        let mut s = UnixStream::connect(sock)?;
        let mut buf = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let body = format!(
                "{{\"id\":{},\"op\":\"exec\",\"target\":{},\"argv\":[\"sim\",\"gone-{i}\"],\"env\":{{\"SIM_DELAY_MS\":\"{delay_ms}\"}}}}",
                i + 1,
                t.spec
            );
            frame_message(&mut buf, body.as_bytes());
        }
        s.write_all(&buf)?;
        std::thread::sleep(Duration::from_millis(delay_ms / 4));
        Ok(targets.len())
    })();
    std::thread::sleep(Duration::from_millis(delay_ms * 2));
    let mut alive = false;
    let mut targets_ok = 0;
    if let Ok(mut cl) = Client::connect(sock) {
        alive = cl.call(serde_json::json!({"op": "stats"})).is_ok();
        for t in targets {
            let spec: Value = serde_json::from_str(&t.spec).unwrap_or_default();
            let req = serde_json::json!({"op": "exec", "target": spec, "argv": ["sim", "after"]});
            if cl.call(req).is_ok() {
                targets_ok += 1;
            }
        }
    }
    serde_json::json!({
        "requests": targets.len(), "sent": sent.as_ref().ok(),
        "error": sent.err().map(|e| e.to_string()), "delay_ms": delay_ms,
        "daemon_alive": alive, "targets_ok_after": targets_ok,
        "pass": alive && targets_ok == targets.len(),
    })
}
