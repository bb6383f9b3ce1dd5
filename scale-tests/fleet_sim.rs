//! spindle-fleet-sim: one single-threaded process that answers as thousands of spindle agents
//! on a Unix socket (each accepted connection is one target), with seeded fault injection.
//!
//! Every connection gets HELLO, `ping` and `exec` answers (`docs/protocol.md`); `exec` replies
//! wait out a service time on a deadline heap (no thread per target). A connection's fault
//! mode comes from the socket it used (`SOCKET.<mode>` with `--fault-sockets`: the driver
//! points targets named `sim-N-<mode>` there) or, on the main socket, from `--fault-mix`
//! fractions applied deterministically by connection number and announced in HELLO ("fault").

#[path = "shared.rs"]
mod shared;

use base64::Engine as _;
use clap::Parser;
use polling::{Event, Events, PollMode, Poller};
use serde_json::{json, Value};
use shared::FaultMode;
use spindle::proto::{encode_frame, flags, Decoder, FrameHeader, Kind, CTX_AGENT, CTX_CONTROLLER};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Payload length the `oversize` fault declares (over the 4 MiB protocol limit).
const OVERSIZE_LEN: u32 = 16 * 1024 * 1024;
/// Reads per readiness event before yielding to other connections.
const READS_PER_EVENT: usize = 4;

#[derive(Parser, Debug)]
#[command(
    name = "spindle-fleet-sim",
    about = "Simulated fleet of spindle agents"
)]
struct Opts {
    /// Main listening socket.
    #[arg(long)]
    socket: PathBuf,
    /// Milliseconds before an `exec` is answered (0 = at once).
    #[arg(long, default_value_t = 0.0)]
    service_ms: f64,
    /// Bytes of stdout in an `exec` reply (starting with the call's token line).
    #[arg(long, default_value_t = 64)]
    reply_bytes: usize,
    /// Fraction of `exec` calls answered with an ERROR reply (chosen by a seeded hash of the
    /// call's token `argv[1]`, so the driver knows which).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Fault fractions for connections on the main socket, e.g. `die=1%,hang=0.01`.
    #[arg(long, default_value = "")]
    fault_mix: String,
    /// Also listen on `SOCKET.<mode>` for each fault mode (every connection there has it).
    #[arg(long)]
    fault_sockets: bool,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Exit after this many seconds (a bound on any run).
    #[arg(long, default_value_t = 3600)]
    lifetime: u64,
    /// Seconds between counter lines on stderr (0: none).
    #[arg(long, default_value_t = 10)]
    stats_secs: u64,
}

struct Conn {
    stream: UnixStream,
    n: u64,
    mode: FaultMode,
    dec: Decoder,
    out: Vec<u8>,
    out_pos: usize,
    reading: bool,
    registered: bool,
    interest: (bool, bool),
    faulted: bool,
    close_after_flush: bool,
    partial: HashMap<u32, Vec<u8>>,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    seq: u64,
    key: usize,
    n: u64,
    handle: u32,
    token: String,
}

#[derive(Default, Debug)]
struct Counters {
    accepted: u64,
    closed: u64,
    calls: u64,
    replies: u64,
    error_replies: u64,
    faults: u64,
    /// Waiting execs dropped by a `cancel`.
    cancelled: u64,
}

struct Sim {
    opts: Opts,
    poller: Poller,
    listeners: Vec<(UnixListener, Option<FaultMode>)>,
    conns: slab::Slab<Conn>,
    timers: BinaryHeap<Reverse<Timer>>,
    /// Waiting `exec`s the daemon cancelled (connection key, connection number, handle).
    cancelled: HashSet<(usize, u64, u32)>,
    mix: Vec<(FaultMode, f64)>,
    rng: shared::Rng,
    seq: u64,
    next_n: u64,
    buf: Vec<u8>,
    c: Counters,
}

/// Listener `i` is registered under `LISTENER_KEYS + i` (connections use small slab keys).
const LISTENER_KEYS: usize = usize::MAX / 2;

fn header(kind: Kind, fl: u8, reply_to: u32) -> FrameHeader {
    FrameHeader {
        kind,
        flags: fl,
        dst: CTX_CONTROLLER,
        src: CTX_AGENT,
        handle: 0,
        reply_to,
    }
}

fn bind(path: &PathBuf) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Raises the soft descriptor limit to the hard one (one descriptor per target here).
fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
}

impl Sim {
    fn new(opts: Opts) -> Result<Sim, String> {
        let mix = shared::parse_mix(&opts.fault_mix)?;
        let poller = Poller::new().map_err(|e| format!("poller: {e}"))?;
        let mut listeners = vec![(bind(&opts.socket), None)];
        if opts.fault_sockets {
            for m in FaultMode::FAULTS {
                let p = PathBuf::from(format!("{}.{}", opts.socket.display(), m.name()));
                listeners.push((bind(&p), Some(m)));
            }
        }
        let mut ls = Vec::new();
        for (i, (l, m)) in listeners.into_iter().enumerate() {
            let l = l.map_err(|e| format!("cannot listen on {}: {e}", opts.socket.display()))?;
            // SAFETY: the listener lives in `self.listeners` for the life of the poller.
            unsafe {
                poller.add_with_mode(&l, Event::readable(LISTENER_KEYS + i), PollMode::Level)
            }
            .map_err(|e| format!("poller add: {e}"))?;
            ls.push((l, m));
        }
        Ok(Sim {
            rng: shared::Rng(opts.seed),
            opts,
            poller,
            listeners: ls,
            conns: slab::Slab::new(),
            timers: BinaryHeap::new(),
            cancelled: HashSet::new(),
            mix,
            seq: 0,
            next_n: 1,
            buf: vec![0u8; 64 * 1024],
            c: Counters::default(),
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let start = Instant::now();
        let end = start + Duration::from_secs(self.opts.lifetime);
        let mut last_stats = start;
        let cap = std::num::NonZeroUsize::new(1024).unwrap_or(std::num::NonZeroUsize::MIN);
        let mut events = Events::with_capacity(cap);
        loop {
            let now = Instant::now();
            if now >= end {
                eprintln!(
                    "fleet-sim: lifetime of {} s reached; exiting",
                    self.opts.lifetime
                );
                return Ok(());
            }
            let next = self.timers.peek().map_or(end, |t| t.0.at.min(end));
            let timeout = next
                .saturating_duration_since(now)
                .min(Duration::from_secs(1));
            events.clear();
            match self.poller.wait(&mut events, Some(timeout)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                if ev.key >= LISTENER_KEYS {
                    self.accept(ev.key - LISTENER_KEYS);
                    continue;
                }
                if ev.writable {
                    self.flush(ev.key);
                }
                if ev.readable {
                    self.read(ev.key);
                }
            }
            self.fire_timers(Instant::now());
            if self.opts.stats_secs > 0 && last_stats.elapsed().as_secs() >= self.opts.stats_secs {
                last_stats = Instant::now();
                eprintln!(
                    "fleet-sim: open={} {:?} timers={}",
                    self.conns.len(),
                    self.c,
                    self.timers.len()
                );
            }
        }
    }

    fn pick_mode(&self, n: u64) -> FaultMode {
        let mut u = shared::unit(shared::mix64(self.opts.seed ^ shared::mix64(n)));
        for (m, f) in &self.mix {
            if u < *f {
                return *m;
            }
            u -= f;
        }
        FaultMode::Healthy
    }

    fn accept(&mut self, i: usize) {
        loop {
            let Some((l, fixed)) = self.listeners.get(i) else {
                return;
            };
            let fixed = *fixed;
            let stream = match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    eprintln!("fleet-sim: accept: {e}");
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let n = self.next_n;
            self.next_n += 1;
            let mode = fixed.unwrap_or_else(|| self.pick_mode(n));
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            // SAFETY: the stream is deleted from the poller before it is dropped (`close`).
            let added = unsafe {
                self.poller
                    .add_with_mode(&stream, Event::readable(key), PollMode::Level)
            };
            if let Err(e) = added {
                eprintln!("fleet-sim: poller add: {e}");
                continue;
            }
            entry.insert(Conn {
                stream,
                n,
                mode,
                dec: Decoder::default(),
                out: Vec::new(),
                out_pos: 0,
                reading: true,
                registered: true,
                interest: (true, false),
                faulted: false,
                close_after_flush: false,
                partial: HashMap::new(),
            });
            self.c.accepted += 1;
            let mut hello = json!({"proto": 1, "python": "sim", "executable": "sim",
                "hostname": format!("sim-{n}"), "uid": 0, "pid": n});
            if mode != FaultMode::Healthy && fixed.is_none() {
                hello["fault"] = mode.name().into();
            }
            self.send_json(key, Kind::Hello, 0, 0, &hello);
        }
    }

    fn read(&mut self, key: usize) {
        for _ in 0..READS_PER_EVENT {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            if !c.reading {
                return;
            }
            match c.stream.read(&mut self.buf) {
                Ok(0) => return self.close(key),
                Ok(n) => c.dec.push(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(key),
            }
            let mut frames = Vec::new();
            loop {
                match c.dec.next_frame() {
                    Ok(Some((h, p))) => frames.push((h, p.to_vec())),
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("fleet-sim: sim-{}: bad frame from the daemon: {e}", c.n);
                        return self.close(key);
                    }
                }
            }
            for (h, p) in frames {
                if h.kind == Kind::Call && !self.on_call(key, h, p) {
                    return;
                }
            }
        }
    }

    /// Handles one CALL frame; false when the connection is gone or stopped reading.
    fn on_call(&mut self, key: usize, h: FrameHeader, payload: Vec<u8>) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        if h.flags & flags::MORE != 0 {
            c.partial
                .entry(h.handle)
                .or_default()
                .extend_from_slice(&payload);
            return true;
        }
        let body = match c.partial.remove(&h.handle) {
            Some(mut p) => {
                p.extend_from_slice(&payload);
                p
            }
            None => payload,
        };
        if c.faulted {
            return true;
        }
        self.c.calls += 1;
        let (n, mode) = (c.n, c.mode);
        let v: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                let m = format!("CALL payload is not JSON: {e}");
                self.error_reply(key, h.handle, "bad_request", &m);
                return true;
            }
        };
        match v["op"].as_str() {
            Some("ping") => {
                self.send_json(
                    key,
                    Kind::Reply,
                    0,
                    h.handle,
                    &json!({"pong": true, "pid": n}),
                );
                if mode == FaultMode::SlowReader {
                    self.stop_reading(key);
                    return false;
                }
                true
            }
            Some("exec") => self.on_exec(key, h.handle, &v),
            Some("cancel") => {
                // As the agent's op_cancel: a waiting exec is dropped, never answered.
                let target = v["handle"].as_u64().and_then(|x| u32::try_from(x).ok());
                let found = target.is_some_and(|t| {
                    self.timers
                        .iter()
                        .any(|r| r.0.key == key && r.0.n == n && r.0.handle == t)
                });
                if let (true, Some(t)) = (found, target) {
                    self.cancelled.insert((key, n, t));
                    self.c.cancelled += 1;
                }
                let v = json!({ "cancelled": found });
                self.send_json(key, Kind::Reply, 0, h.handle, &v);
                true
            }
            Some("shutdown") => {
                self.send_json(key, Kind::Reply, 0, h.handle, &json!({}));
                if let Some(c) = self.conns.get_mut(key) {
                    c.close_after_flush = true;
                }
                self.flush(key);
                false
            }
            other => {
                let m = format!("the simulator has no op {other:?}");
                self.error_reply(key, h.handle, "bad_request", &m);
                true
            }
        }
    }

    fn on_exec(&mut self, key: usize, handle: u32, v: &Value) -> bool {
        let Some(c) = self.conns.get_mut(key) else {
            return false;
        };
        let mode = c.mode;
        if mode != FaultMode::Healthy {
            self.c.faults += 1;
        }
        match mode {
            FaultMode::Healthy => {}
            FaultMode::Die => {
                self.close(key);
                return false;
            }
            FaultMode::Hang | FaultMode::SlowReader => return true,
            FaultMode::Garbage => {
                c.faulted = true;
                let mut junk = vec![0u8; 64];
                for b in junk.iter_mut() {
                    *b = self.rng.next_u64() as u8;
                }
                if junk[0] == b'S' {
                    junk[0] = b'?';
                }
                self.queue(key, &junk);
                return true;
            }
            FaultMode::Oversize => {
                c.faulted = true;
                let mut wire = Vec::new();
                encode_frame(&mut wire, &header(Kind::Reply, 0, handle), &[]);
                wire[4..8].copy_from_slice(&OVERSIZE_LEN.to_be_bytes());
                self.queue(key, &wire);
                return true;
            }
        }
        let token = v["argv"][1].as_str().unwrap_or("").to_string();
        let delay_ms = v["env"]["SIM_DELAY_MS"]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(self.opts.service_ms);
        if delay_ms <= 0.0 {
            self.answer_exec(key, handle, &token);
        } else {
            self.seq += 1;
            let n = c.n;
            self.timers.push(Reverse(Timer {
                at: Instant::now() + Duration::from_secs_f64(delay_ms / 1000.0),
                seq: self.seq,
                key,
                n,
                handle,
                token,
            }));
        }
        true
    }

    fn answer_exec(&mut self, key: usize, handle: u32, token: &str) {
        if shared::call_fails(self.opts.seed, token, self.opts.fail_rate) {
            return self.error_reply(key, handle, "io", "simulated failure");
        }
        let mut out = Vec::with_capacity(self.opts.reply_bytes.max(token.len() + 1));
        out.extend_from_slice(token.as_bytes());
        out.push(b'\n');
        out.resize(self.opts.reply_bytes.max(out.len()), b'x');
        let b64 = base64::engine::general_purpose::STANDARD.encode(&out);
        let v = json!({"rc": 0, "stdout_b64": b64, "stderr_b64": "", "timed_out": false});
        self.send_json(key, Kind::Reply, 0, handle, &v);
    }

    fn fire_timers(&mut self, now: Instant) {
        while self.timers.peek().is_some_and(|t| t.0.at <= now) {
            let Some(Reverse(t)) = self.timers.pop() else {
                return;
            };
            if self.cancelled.remove(&(t.key, t.n, t.handle)) {
                continue;
            }
            if self.conns.get(t.key).is_some_and(|c| c.n == t.n) {
                self.answer_exec(t.key, t.handle, &t.token);
            }
        }
    }

    fn error_reply(&mut self, key: usize, handle: u32, kind: &str, msg: &str) {
        self.c.error_replies += 1;
        let v = json!({"error": kind, "message": msg});
        self.send_json(key, Kind::Reply, flags::ERROR, handle, &v);
    }

    fn send_json(&mut self, key: usize, kind: Kind, fl: u8, reply_to: u32, v: &Value) {
        let payload = serde_json::to_vec(v).unwrap_or_default();
        let mut wire = Vec::with_capacity(payload.len() + 24);
        encode_frame(&mut wire, &header(kind, fl, reply_to), &payload);
        if kind == Kind::Reply {
            self.c.replies += 1;
        }
        self.queue(key, &wire);
    }

    fn queue(&mut self, key: usize, bytes: &[u8]) {
        if let Some(c) = self.conns.get_mut(key) {
            c.out.extend_from_slice(bytes);
            self.flush(key);
        }
    }

    fn flush(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(key),
            }
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
            if c.close_after_flush {
                return self.close(key);
            }
        }
        self.update_interest(key);
    }

    fn stop_reading(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key) {
            c.reading = false;
        }
        self.update_interest(key);
    }

    /// Level-triggered interest: read while reading, write while output is pending. A
    /// connection that wants neither is taken out of the poller (a hang-up would otherwise be
    /// reported on every wait).
    fn update_interest(&mut self, key: usize) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let want = (c.reading, c.out_pos < c.out.len());
        if want == c.interest {
            return;
        }
        c.interest = want;
        let ev = Event::new(key, want.0, want.1);
        let res = if want == (false, false) {
            c.registered = false;
            self.poller.delete(&c.stream)
        } else if c.registered {
            self.poller.modify_with_mode(&c.stream, ev, PollMode::Level)
        } else {
            c.registered = true;
            // SAFETY: as in `accept`: deleted from the poller before the stream is dropped.
            unsafe { self.poller.add_with_mode(&c.stream, ev, PollMode::Level) }
        };
        if let Err(e) = res {
            eprintln!("fleet-sim: poller: {e}");
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(c) = self.conns.try_remove(key) {
            if c.registered {
                let _ = self.poller.delete(&c.stream);
            }
            self.c.closed += 1;
        }
    }
}

fn main() {
    let opts = Opts::parse();
    raise_nofile();
    let mut sim = match Sim::new(opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleet-sim: {e}");
            std::process::exit(2);
        }
    };
    eprintln!(
        "fleet-sim: listening on {} (fault sockets: {})",
        sim.opts.socket.display(),
        sim.opts.fault_sockets
    );
    if let Err(e) = sim.run() {
        eprintln!("fleet-sim: event loop: {e}");
        std::process::exit(1);
    }
}
