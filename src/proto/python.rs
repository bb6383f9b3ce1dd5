//! The wire constants in Python: the block between the markers in the agent's first part,
//! `src/agent/parts/00_channel.py`, is rendered from this module's Rust constants, so the
//! protocol has one source.
//!
//! The agent stays plain Python files (its tests start it from the source tree, and
//! `transport::bootstrap` ships the parts joined as they are), so the block is generated into the file rather
//! than at build time, in the way rust-analyzer keeps its generated sources: the test below
//! renders it and fails when the file differs; `SPINDLE_BLESS=1 cargo test --lib proto::python`
//! rewrites it. `tests/python` reads the same block from 00_channel.py (no copy of its own).

use super::{
    flags, Kind, CTX_AGENT, CTX_CONTROLLER, HEADER_LEN, MAGIC, MAX_PAYLOAD, PROTO_VERSION,
};

/// First line of the generated block in 00_channel.py.
pub const BEGIN: &str =
    "# --- wire constants: generated from src/proto (proto::python); do not edit ---";
/// Last line of the generated block in 00_channel.py.
pub const END: &str = "# --- end of wire constants ---";

/// Python name of a frame kind. Exhaustive: a new [`Kind`] does not compile until named here.
fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Hello => "HELLO",
        Kind::Call => "CALL",
        Kind::Reply => "REPLY",
        Kind::Data => "DATA",
        Kind::Log => "LOG",
        Kind::Credit => "CREDIT",
    }
}

const KINDS: [Kind; 6] = [
    Kind::Hello,
    Kind::Call,
    Kind::Reply,
    Kind::Data,
    Kind::Log,
    Kind::Credit,
];

const FLAGS: [(&str, u8); 6] = [
    ("MORE", flags::MORE),
    ("ERROR", flags::ERROR),
    ("EOF", flags::EOF),
    ("ABORT", flags::ABORT),
    ("REFS", flags::REFS),
    ("SIZE", flags::SIZE),
];

/// The block, markers included, each line ending in `\n`.
pub fn constants() -> String {
    let names: Vec<&str> = KINDS.iter().map(|k| kind_name(*k)).collect();
    let values: Vec<String> = KINDS.iter().map(|k| (*k as u8).to_string()).collect();
    let fnames: Vec<&str> = FLAGS.iter().map(|f| f.0).collect();
    let fvalues: Vec<String> = FLAGS.iter().map(|f| format!("0x{:02x}", f.1)).collect();
    let magic = String::from_utf8_lossy(&MAGIC);
    format!(
        "{BEGIN}\n\
         PROTO = {PROTO_VERSION}\n\
         MAGIC = b\"{magic}\"\n\
         HEADER = struct.Struct(\">2sBBIIIII\")  # magic kind flags len dst src handle reply_to\n\
         HEADER_LEN = {HEADER_LEN}\n\
         MAX_PAYLOAD = {MAX_PAYLOAD}\n\
         {} = {}\n\
         {} = {}\n\
         CONTROLLER, SELF = {CTX_CONTROLLER}, {CTX_AGENT}\n\
         {END}\n",
        names.join(", "),
        values.join(", "),
        fnames.join(", "),
        fvalues.join(", "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent/parts/00_channel.py")
    }

    /// `(before, block, after)` of 00_channel.py's text, split at the markers.
    fn split(text: &str) -> (&str, &str, &str) {
        let start = text
            .find(BEGIN)
            .expect("00_channel.py has the BEGIN marker");
        let end_at = text[start..]
            .find(END)
            .expect("00_channel.py has the END marker")
            + start;
        let stop = end_at + END.len() + 1; // the END line's newline
        (&text[..start], &text[start..stop], &text[stop..])
    }

    #[test]
    fn agent_py_holds_the_generated_constants() {
        let path = agent_path();
        let text = std::fs::read_to_string(&path).expect("read 00_channel.py");
        let (before, block, after) = split(&text);
        let want = constants();
        if block == want {
            return;
        }
        if std::env::var_os("SPINDLE_BLESS").is_some() {
            std::fs::write(&path, format!("{before}{want}{after}")).expect("write 00_channel.py");
            return;
        }
        panic!(
            "src/agent/parts/00_channel.py's wire constants differ from src/proto; run \
             `SPINDLE_BLESS=1 cargo test --lib proto::python` to regenerate.\n\
             --- in 00_channel.py\n{block}--- from src/proto\n{want}"
        );
    }

    #[test]
    fn header_layout_matches_the_struct_format() {
        // ">2sBBIIIII": 2 magic bytes, kind, flags, then five u32.
        assert_eq!(HEADER_LEN, 2 + 1 + 1 + 5 * 4);
        assert!(constants().contains("HEADER_LEN = 24\n"));
        assert!(constants().contains("HELLO, CALL, REPLY, DATA, LOG, CREDIT = 1, 2, 3, 4, 5, 6\n"));
    }
}
