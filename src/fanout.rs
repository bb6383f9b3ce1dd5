//! Fanning one request out to many targets through one daemon connection, and summarising the
//! outcomes the way an operator reads them (ok / failed / unreachable, slowest hosts).

use crate::api::ErrorKind;
use crate::client::{Client, ClientError};
use crate::transport::Spec;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How one target's request ended.
#[derive(Debug)]
pub struct Outcome {
    /// The target.
    pub spec: Spec,
    /// The result or error.
    pub result: Result<serde_json::Value, ClientError>,
    /// From sending the request to its reply.
    pub elapsed: Duration,
}

/// The Ansible-style category of an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Succeeded (and, for exec, rc 0).
    Ok,
    /// The target answered but the work failed.
    Failed,
    /// The target could not be reached or its stream died.
    Unreachable,
}

impl Outcome {
    /// Categorises the outcome.
    pub fn status(&self) -> Status {
        match &self.result {
            Ok(v) if v.get("rc").and_then(|r| r.as_i64()).unwrap_or(0) != 0 => Status::Failed,
            Ok(_) => Status::Ok,
            Err(ClientError::Api { kind, .. })
                if matches!(
                    ErrorKind::from_name(kind),
                    Some(
                        ErrorKind::Unreachable
                            | ErrorKind::AuthFailed
                            | ErrorKind::HostKeyMismatch
                            | ErrorKind::NoPython
                            | ErrorKind::Timeout
                            | ErrorKind::ConnectionLost
                    )
                ) =>
            {
                Status::Unreachable
            }
            Err(_) => Status::Failed,
        }
    }
}

/// Sends `build(spec)` for every spec, then collects every reply; `each` sees outcomes as
/// they arrive (for a progress bar).
pub fn fan_out(
    client: &mut Client,
    specs: &[Spec],
    build: impl Fn(&Spec) -> serde_json::Value,
    mut each: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>, ClientError> {
    let mut sent: HashMap<u64, (usize, Instant)> = HashMap::new();
    for (i, s) in specs.iter().enumerate() {
        let mut req = build(s);
        req["target"] =
            serde_json::to_value(s).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let id = client.send(req)?;
        sent.insert(id, (i, Instant::now()));
    }
    let mut out: Vec<Option<Outcome>> = specs.iter().map(|_| None).collect();
    while !sent.is_empty() {
        let r = client.recv()?;
        let Some((i, at)) = sent.remove(&r.id) else {
            continue;
        };
        let o = Outcome {
            spec: specs[i].clone(),
            result: r.result,
            elapsed: at.elapsed(),
        };
        each(&o);
        out[i] = Some(o);
    }
    Ok(out.into_iter().flatten().collect())
}

/// Counts per status and the slowest hosts.
pub fn summary(outcomes: &[Outcome]) -> String {
    let n = |s: Status| outcomes.iter().filter(|o| o.status() == s).count();
    let mut by_time: Vec<&Outcome> = outcomes.iter().collect();
    by_time.sort_by_key(|o| std::cmp::Reverse(o.elapsed));
    let slow: Vec<String> = by_time
        .iter()
        .take(5)
        .map(|o| format!("{} {:.2}s", o.spec.label(), o.elapsed.as_secs_f64()))
        .collect();
    format!(
        "ok={} failed={} unreachable={} (of {}); slowest: {}",
        n(Status::Ok),
        n(Status::Failed),
        n(Status::Unreachable),
        outcomes.len(),
        slow.join(", ")
    )
}
