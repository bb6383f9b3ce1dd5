//! Bootstrap text: stage 0 (a POSIX shell line finding an interpreter) and stage 1 (Python
//! reading the zlib-compressed agent from fd 0 and executing it in RAM). Nothing is written on
//! the target. See `docs/protocol.md`.

use flate2::{write::ZlibEncoder, Compression};
use std::io::Write;
use std::sync::OnceLock;

/// One part under `src/agent/<dir>/`: its file name and text.
macro_rules! part {
    ($dir:literal, $name:literal) => {
        ($name, include_str!(concat!("../agent/", $dir, "/", $name)))
    };
}

/// Parts joined in their order into one source.
fn joined(parts: &[(&str, &str)]) -> String {
    let texts: Vec<&str> = parts.iter().map(|p| p.1).collect();
    texts.join("\n\n")
}

/// The agent's Python source in parts (`src/agent/parts/`, each owning one area), embedded at
/// build time and joined in this order into one source: one namespace, as if one file. The
/// test `agent_parts_are_every_file_in_order` keeps this list equal to the directory.
pub const AGENT_PARTS: &[(&str, &str)] = &[
    part!("parts", "00_channel.py"),
    part!("parts", "10_exec.py"),
    part!("parts", "20_files.py"),
    part!("parts", "22_digests.py"),
    part!("parts", "25_context_table.py"),
    part!("parts", "30_contexts.py"),
    part!("parts", "40_hop_cache.py"),
    part!("parts", "48_blob_store.py"),
    part!("parts", "50_modules.py"),
    part!("parts", "60_main.py"),
];

/// The agent's parts joined (what `tests/python/agent_source.py` builds the same way).
pub fn agent_source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| joined(AGENT_PARTS))
}
/// The module runner in parts (`src/agent/modrun/`), joined in this order into one source,
/// given to the agent as a base64 string and loaded by it (as one module) on its first
/// `run_module`. The test `modrun_parts_are_every_file_in_order` keeps this list equal to the
/// directory.
pub const MODRUN_PARTS: &[(&str, &str)] = &[
    part!("modrun", "00_importer.py"),
    part!("modrun", "10_process_state.py"),
    part!("modrun", "15_spawn.py"),
    part!("modrun", "20_run.py"),
    part!("modrun", "30_async.py"),
];

/// The module runner's parts joined (what `tests/python/agent_source.py` builds the same way).
pub fn modrun_source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| joined(MODRUN_PARTS))
}

/// The full text the agent runs: the module runner as a base64 constant, then the agent.
pub fn full_agent_source() -> &'static str {
    static SRC: OnceLock<String> = OnceLock::new();
    SRC.get_or_init(|| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(modrun_source());
        format!("_SPINDLE_MODRUN_B64 = \"{b64}\"\n{}", agent_source())
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

/// Stage 1: write the boot marker on stdout (what a login shell printed before it is skipped:
/// `proto::boot`), read exactly `n` bytes unbuffered from fd 0, decompress, exec. One line
/// without a single quote, so stage 0 can wrap it in `'...'` and any login shell can be given
/// stage 0 (csh has no newline inside quotes; see [`login_shell_word`]).
pub fn stage1(n: usize) -> String {
    let marker = String::from_utf8_lossy(crate::proto::BOOT_MARKER);
    let marker = marker.trim_end_matches('\n');
    format!(
        "import os,zlib;os.write(1,b\"{marker}\\n\");n={n};r=[];\
         [r.append(c) for c in iter(lambda:os.read(0,n-sum(map(len,r))),b\"\")];\
         b=b\"\".join(r);len(b)<n and os._exit(1);del r;\
         exec(compile(zlib.decompress(b),\"<spindle-agent>\",\"exec\"))"
    )
}

/// `posix` (a POSIX shell command line) as the one word an ssh command gives the target's
/// login shell: `exec /bin/sh -c '...'`, a simple command that bash, dash, zsh, ksh, fish and
/// (t)csh all parse alike (stock Ansible sends `/bin/sh -c '...'` for the same reason), with
/// `'` inside written `'\''`. `posix` must be one line (csh).
pub fn login_shell_word(posix: &str) -> String {
    format!("exec /bin/sh -c '{}'", posix.replace('\'', "'\\''"))
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

    /// `parts` lists every `*.py` of `dir` in name order, each ending in a newline and at
    /// most 450 lines long.
    fn every_file_in_order(dir: &str, parts: &[(&str, &str)]) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut names: Vec<String> = std::fs::read_dir(path)
            .expect(dir)
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".py"))
            .collect();
        names.sort();
        let listed: Vec<&str> = parts.iter().map(|p| p.0).collect();
        assert_eq!(
            names, listed,
            "{dir}: the list must name every part, in name order"
        );
        for (name, text) in parts {
            assert!(text.ends_with('\n'), "{name} ends without a newline");
            assert!(
                text.lines().count() <= 450,
                "{name} is over 450 lines: split it"
            );
        }
    }

    #[test]
    fn agent_parts_are_every_file_in_order() {
        every_file_in_order("src/agent/parts", AGENT_PARTS);
    }

    #[test]
    fn modrun_parts_are_every_file_in_order() {
        every_file_in_order("src/agent/modrun", MODRUN_PARTS);
    }

    /// Stage 0 as ssh gives it to a login shell ([`login_shell_word`]), run by every shell
    /// this machine has: the marker, then the agent's own output (its HELLO frame), whatever
    /// the shell's syntax; a shell printing first only comes before the marker.
    #[test]
    fn stage0_starts_the_agent_under_any_login_shell() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(python) = python else { return };
        let word = login_shell_word(&stage0(Some((python, python))));
        let mut ran = 0;
        for shell in [
            "sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh",
        ] {
            let Some(path) = ["/bin/", "/usr/bin/"]
                .iter()
                .map(|d| format!("{d}{shell}"))
                .find(|p| std::path::Path::new(p).exists())
            else {
                continue;
            };
            // (what sshd runs: the login shell with -c; an rc file's greeting first)
            let line = format!("echo talkative rc; {word}");
            let mut child = Command::new(&path)
                .args(["-c", &line])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the shell");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(agent_blob()).expect("write the agent");
            drop(stdin); // the agent sees EOF after its HELLO and exits
            let out = child.wait_with_output().expect("wait");
            // what the daemon does with it (proto::boot)
            match crate::proto::BootScan::default().push(&out.stdout) {
                crate::proto::BootStep::Started { preamble, rest } => {
                    assert_eq!(preamble, b"talkative rc\n", "{shell}");
                    assert!(rest.starts_with(&crate::proto::MAGIC), "{shell}: {rest:?}");
                }
                other => panic!(
                    "{shell}: no boot marker ({other:?}; stderr {:?})",
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
            ran += 1;
        }
        assert!(ran > 0, "no shell found");
    }

    #[test]
    fn stage1_has_no_single_quote_and_blob_inflates() {
        assert!(!stage1(10).contains('\''));
        assert!(
            !stage1(10).contains('\n'),
            "one line: csh has no newline inside quotes"
        );
        let mut d = flate2::read::ZlibDecoder::new(agent_blob());
        let mut s = String::new();
        std::io::Read::read_to_string(&mut d, &mut s).unwrap();
        assert_eq!(s, full_agent_source());
        assert!(s.contains("_SPINDLE_MODRUN_B64"));
    }
}
