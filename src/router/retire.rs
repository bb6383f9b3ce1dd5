//! Retiring an agent whose interpreter a task replaced on the target (docs/protocol.md,
//! "Retire"): a package upgrade of python3, or `python3` now another version. Stock Ansible
//! starts a new interpreter for every task and so runs the new one; here the agent says so
//! once (a REPLY with `reply_to` 0 and `{"retire": why}`), new requests for its spec and for
//! every spec behind it (become, interpreter and via contexts) open anew, and it is closed
//! once no call runs in it or behind it. Nothing in flight is cut.

use super::{ErrorKind, Phase, Router, TargetId};

impl Router {
    /// After frames from `t` were handled: `t` and each target above it that retires serves
    /// no new request, and is closed once nothing runs in it or behind it.
    pub(super) fn retire_idle(&mut self, t: TargetId) {
        let mut at = Some(t);
        while let Some(a) = at {
            let Some(x) = self.targets.get(a) else { return };
            at = x.parent;
            let Some(why) = x.retiring.clone() else {
                continue;
            };
            if x.phase == Phase::Dead {
                continue;
            }
            self.forget_below(a);
            if !self.busy_below(a) {
                tracing::info!(host = %self.targets[a].label, "closing the retired agent: {why}");
                self.counters.retired += 1;
                let m = format!("its agent retired: {why}");
                self.close_target(a, ErrorKind::ConnectionLost, &m, false);
            }
        }
    }

    /// Takes `t` and every target behind it out of `by_key`: requests open new ones.
    fn forget_below(&mut self, t: TargetId) {
        let Some(x) = self.targets.get(t) else { return };
        if self.by_key.get(&x.key) == Some(&t) {
            self.by_key.remove(&x.key);
        }
        let children: Vec<TargetId> = x.children.values().copied().collect();
        for c in children {
            self.forget_below(c);
        }
    }

    /// Whether a call runs in `t` or in a live target behind it.
    fn busy_below(&self, t: TargetId) -> bool {
        let Some(x) = self.targets.get(t) else {
            return false;
        };
        x.phase != Phase::Dead
            && (!x.calls.is_empty() || x.children.values().any(|&c| self.busy_below(c)))
    }
}
