//! What the fleet simulator and the scale driver must agree on: fault modes, the fault-mix
//! syntax, and the seeded hashes that decide (identically on both sides) which calls fail.
#![allow(dead_code)]

/// How a simulated target misbehaves. Faults trigger on the first `exec` a connection gets
/// (HELLO and `ping` are always answered, so streams open and the driver can tell them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultMode {
    /// Answers everything.
    Healthy,
    /// Closes the connection when an `exec` arrives (mid-request): the agent ended, ssh-less.
    Die,
    /// Reads `exec` calls and never answers them.
    Hang,
    /// Sends random bytes (never starting with the frame magic) instead of a reply.
    Garbage,
    /// Sends a REPLY header declaring a 16 MiB payload.
    Oversize,
    /// Stops reading the socket after answering the first `ping`.
    SlowReader,
}

impl FaultMode {
    /// Every fault (not `Healthy`), in a fixed order.
    pub const FAULTS: [FaultMode; 5] = [
        FaultMode::Die,
        FaultMode::Hang,
        FaultMode::Garbage,
        FaultMode::Oversize,
        FaultMode::SlowReader,
    ];

    /// Name used on the command line, in target names and in socket suffixes.
    pub fn name(self) -> &'static str {
        match self {
            FaultMode::Healthy => "healthy",
            FaultMode::Die => "die",
            FaultMode::Hang => "hang",
            FaultMode::Garbage => "garbage",
            FaultMode::Oversize => "oversize",
            FaultMode::SlowReader => "slow-reader",
        }
    }

    /// Parses a fault name.
    pub fn parse(s: &str) -> Option<FaultMode> {
        Self::FAULTS.into_iter().find(|m| m.name() == s)
    }

    /// The daemon error kind (`docs/api.md`) an `exec` to such a target must get; `None` for
    /// a healthy target (success, or `remote` when the simulator's fail-rate picks the call).
    pub fn expected_kind(self) -> Option<&'static str> {
        match self {
            FaultMode::Healthy => None,
            FaultMode::Die => Some("agent_ended"),
            FaultMode::Hang | FaultMode::SlowReader => Some("timeout"),
            FaultMode::Garbage | FaultMode::Oversize => Some("protocol"),
        }
    }
}

/// The default mix of the driver's `--faults`.
pub const DEFAULT_MIX: &str = "die=1%,hang=1%,garbage=1%,oversize=0.5%,slow-reader=0.5%";

/// Parses `die=1%,hang=0.01,...` into (mode, fraction) pairs; `default` means [`DEFAULT_MIX`].
pub fn parse_mix(s: &str) -> Result<Vec<(FaultMode, f64)>, String> {
    let s = if s == "default" { DEFAULT_MIX } else { s };
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("fault mix item {part:?} is not NAME=FRACTION"))?;
        let mode = FaultMode::parse(k.trim()).ok_or_else(|| format!("unknown fault {k:?}"))?;
        let v = v.trim();
        let frac = match v.strip_suffix('%') {
            Some(p) => p.parse::<f64>().map(|x| x / 100.0),
            None => v.parse::<f64>(),
        }
        .map_err(|e| format!("fault fraction {v:?}: {e}"))?;
        if !(0.0..=1.0).contains(&frac) {
            return Err(format!("fault fraction {v:?} is not within 0..1"));
        }
        out.push((mode, frac));
    }
    if out.iter().map(|(_, f)| f).sum::<f64>() > 1.0 {
        return Err("fault fractions add up to more than 1".into());
    }
    Ok(out)
}

/// splitmix64's finaliser: a well-mixed 64-bit function of `x`.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A seeded hash of a byte string (FNV-1a, then mixed).
pub fn hash_bytes(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ mix64(seed);
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// Maps a hash to [0, 1).
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether the simulator answers the exec call carrying `token` with an ERROR reply.
pub fn call_fails(seed: u64, token: &str, fail_rate: f64) -> bool {
    fail_rate > 0.0 && unit(hash_bytes(seed ^ 0x5eed_fa11, token.as_bytes())) < fail_rate
}

/// A small deterministic generator (splitmix64).
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
}
