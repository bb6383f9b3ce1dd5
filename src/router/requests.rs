//! A client's request, parsed and validated by [`api::parse_request`], dispatched by op: the
//! daemon's own ops (`stats`, `blob_put`, `note`, `alive`, `shutdown`, `close`, `open`) are
//! answered here, one function each; an op on a target's stream goes to its target (started if need
//! be) and [`Router::start_call`].

use super::target::Phase;
use super::{Action, ClientId, Router, TargetId};
use crate::api::{self, BlobPutArgs, ErrorKind, NoteArgs, Op, Request};
use crate::metrics::TargetCounters;
use crate::transport::Spec;
use base64::Engine as _;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Instant;

impl Router {
    /// Handles one API request from `client`.
    pub fn request(&mut self, client: ClientId, req: Request, now: Instant) {
        let id = req.id;
        let answer = match &req.op {
            Op::Stats(_) => api::ok_value(id, &self.stats()),
            Op::BlobPut(b) => self.blob_put(id, b),
            Op::Shutdown(_) => {
                self.actions
                    .push_back(Action::Reply(client, api::ok_raw(id, b"{}")));
                self.actions.push_back(Action::Shutdown);
                return;
            }
            Op::Alive(_) => api::ok_value(id, &json!({ "pid": std::process::id() })),
            Op::Note(n) => self.note(id, req.target.as_ref(), n),
            Op::Close(_) => match &req.target {
                Some(spec) => {
                    self.close_stream(spec);
                    api::ok_raw(id, b"{}")
                }
                None => needs_target(id),
            },
            Op::Open(_) => match req.target.clone() {
                Some(spec) => api::ok_value(id, &json!({ "stream": self.open(spec, now) })),
                None => needs_target(id),
            },
            Op::Ping(_) | Op::Exec(_) | Op::Put(_) | Op::Fetch(_) | Op::Call(_) => {
                let Some(spec) = req.target.clone() else {
                    let msg = needs_target(id);
                    return self.actions.push_back(Action::Reply(client, msg));
                };
                let spec = self.resolve_interpreter(spec);
                let Some(req) = self.probe_gate(&spec, client, req, now) else {
                    return; // held until its idle stream is checked (see `probe`)
                };
                let t = self.target_for(spec, now);
                return self.start_call(t, client, req, now);
            }
        };
        self.actions.push_back(Action::Reply(client, answer));
    }

    /// `stats`: the daemon's counters, per target keyed by label (become contexts sharing
    /// one, with other flags or a password, get their context id appended).
    fn stats(&self) -> serde_json::Value {
        let mut targets: BTreeMap<String, TargetCounters> = BTreeMap::new();
        for &t in self.by_key.values() {
            let x = &self.targets[t];
            let mut label = x.label.clone();
            if targets.contains_key(&label) {
                label = format!("{label} [ctx {}]", x.ctx);
            }
            targets.insert(label, x.counters);
        }
        json!({"streams": self.streams(), "io": self.backend, "counters": self.counters,
            "paths": self.paths, "transfer": self.transfer, "fds": self.fds,
            "clients": self.clients,
            "blobs": {"count": self.cache.len(), "bytes": self.cache.bytes()},
            "targets": targets})
    }

    /// `blob_put`: a code blob into the daemon's cache (its hash checked there).
    fn blob_put(&mut self, id: u64, b: &BlobPutArgs) -> Vec<u8> {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&b.data_b64) else {
            return api::error(id, ErrorKind::BadRequest, "", "data_b64 is not base64");
        };
        match self.cache.put(&b.hash, bytes) {
            Ok(()) => api::ok_raw(id, b"{}"),
            Err(e) => api::error(id, ErrorKind::BadRequest, "", &e.to_string()),
        }
    }

    /// `note`: a module task the plugin runs on the stock path (docs/api.md), counted, and
    /// whether this host gave this reason before in this run (the plugin warns once).
    fn note(&mut self, id: u64, target: Option<&Spec>, n: &NoteArgs) -> Vec<u8> {
        let (Some(spec), "stock") = (target, n.path.as_str()) else {
            let m = "note needs \"target\", \"path\": \"stock\" and a \"reason\"";
            return api::error(id, ErrorKind::BadRequest, "", m);
        };
        let run = n.run.as_deref().unwrap_or("");
        let first = self.paths.stock(run, &spec.parent().label(), &n.reason);
        api::ok_value(id, &json!({ "first": first }))
    }

    /// `open`: the target's stream (or become or interpreter context) is started if it is not
    /// there, or checked if it has been idle (see `probe`), without waiting for either. A
    /// client sends it before work of its own that precedes its first request (the plugin:
    /// before Ansible builds a run's first module), so the connect overlaps that work. What
    /// the stream is doing: `"ready"`, `"opening"` or `"checking"`.
    fn open(&mut self, spec: Spec, now: Instant) -> &'static str {
        let spec = self.resolve_interpreter(spec);
        if self.check_if_idle(&spec, now) {
            return "checking";
        }
        let t = self.target_for(spec, now);
        match self.targets[t].phase {
            Phase::Ready => "ready",
            _ => "opening",
        }
    }

    /// `close`: the target's stream is shut down. A hop that carries other targets stays
    /// (their streams depend on it): only its own become contexts are closed (Ansible's
    /// reset_connection on a bastion must not cut the hosts behind it).
    fn close_stream(&mut self, spec: &Spec) {
        let Some(&t) = self.by_key.get(&spec.key()) else {
            return;
        };
        let x = &self.targets[t];
        let (carried, own): (Vec<TargetId>, Vec<TargetId>) = x
            .children
            .values()
            .copied()
            .filter(|&c| self.targets.get(c).is_some_and(|y| y.phase != Phase::Dead))
            .partition(|&c| !self.targets[c].spec.is_context());
        let why = "stream closed by request";
        if carried.is_empty() {
            self.fail_target(t, ErrorKind::ConnectionLost, why);
        } else {
            for c in own {
                self.close_target(c, ErrorKind::ConnectionLost, why, false);
            }
        }
    }
}

/// The answer to an op on a target's stream that names none.
fn needs_target(id: u64) -> Vec<u8> {
    api::error(id, ErrorKind::BadRequest, "", "this op needs a \"target\"")
}
