//! Bootstrap text: stage 0 (a POSIX shell line finding an interpreter) and stage 1 (Python
//! reading the zlib-compressed agent from fd 0 and executing it in RAM). Nothing is written on
//! the target. See `docs/protocol.md`.

use flate2::{write::ZlibEncoder, Compression};
use std::io::Write;
use std::sync::OnceLock;

/// The agent's Python source, embedded at build time.
pub const AGENT_SOURCE: &str = include_str!("../agent/agent.py");
/// The module runner (`src/agent/modrun.py`), given to the agent as a base64 string and
/// loaded by it on first `run_module`.
pub const MODRUN_SOURCE: &str = include_str!("../agent/modrun.py");

/// The full text the agent runs: the module runner as a base64 constant, then the agent.
pub fn full_agent_source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(MODRUN_SOURCE);
        format!("_SPINDLE_MODRUN_B64 = \"{b64}\"\n{AGENT_SOURCE}")
    })
}

/// Interpreters tried, in order, when none is configured.
pub const DISCOVERY: &[&str] = &[
    "python3",
    "python3.14",
    "python3.13",
    "python3.12",
    "python3.11",
    "python3.10",
    "python3.9",
    "python3.8",
    "/usr/libexec/platform-python",
    "python",
];

/// Marker the discovery loop prints when no interpreter is found.
pub const NO_PYTHON_MARKER: &str = "spindle: no python interpreter found";

/// The compressed agent (computed once).
pub fn agent_blob() -> &'static [u8] {
    static BLOB: OnceLock<Vec<u8>> = OnceLock::new();
    BLOB.get_or_init(|| {
        let mut z = ZlibEncoder::new(Vec::new(), Compression::best());
        // Writing to a Vec cannot fail.
        let _ = z.write_all(full_agent_source().as_bytes());
        z.finish().unwrap_or_default()
    })
}

/// Stage 1: read exactly `n` bytes unbuffered from fd 0, decompress, exec. Contains no single
/// quote, so stage 0 can wrap it in `'...'`.
pub fn stage1(n: usize) -> String {
    format!(
        "import os,zlib\nn={n};b=b\"\"\nwhile len(b)<n:\n c=os.read(0,n-len(b))\n if not c:raise SystemExit(1)\n b+=c\nexec(compile(zlib.decompress(b),\"<spindle-agent>\",\"exec\"))\n"
    )
}

/// Stage 0: the shell command run on the target. `python` is the interpreter to start the
/// agent with as shell words already quoted (its first word is the program), or `None` for
/// discovery. A named interpreter that is not there falls back to discovery: the agent is
/// the host's connection (raw and file transfers need no particular Python), and a module
/// that needs the missing interpreter fails as it does under stock Ansible.
pub fn stage0(python: Option<(&str, &str)>) -> String {
    let s1 = stage1(agent_blob().len());
    let names = DISCOVERY.join(" ");
    let discover = format!(
        "for p in {names}; do if command -v \"$p\" >/dev/null 2>&1; then exec \"$p\" -c '{s1}'; fi; done; echo \"{NO_PYTHON_MARKER}\" >&2; exit 127"
    );
    match python {
        Some((program, py)) => format!(
            "if command -v {program} >/dev/null 2>&1; then exec {py} -c '{s1}'; fi; {discover}"
        ),
        None => discover,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage1_has_no_single_quote_and_blob_inflates() {
        assert!(!stage1(10).contains('\''));
        let mut d = flate2::read::ZlibDecoder::new(agent_blob());
        let mut s = String::new();
        std::io::Read::read_to_string(&mut d, &mut s).unwrap();
        assert_eq!(s, full_agent_source());
        assert!(s.contains("_SPINDLE_MODRUN_B64"));
    }
}
