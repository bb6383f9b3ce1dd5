//! No request can take the daemon down (issue 13, items 1 and 11): every number a client
//! sends (durations, sizes, modes, ports, ids) is range-checked when the request is parsed and
//! answered `bad_request` naming the field; NUL bytes in argv/env/shell/cwd and arrays where
//! an object is required are refused the same way. A property test feeds arbitrary numbers
//! into every duration/size field of every op to a real daemon (backend from SPINDLE_IO) and
//! checks that it answers each one and keeps serving.

mod common;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use spindle::api::{frame_message, MessageDecoder};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A client that sends raw JSON text (numbers serde_json would not produce: 1e400, -0, ...).
struct Raw {
    stream: UnixStream,
    dec: MessageDecoder,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let stream = UnixStream::connect(path).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        Raw {
            stream,
            dec: MessageDecoder::default(),
        }
    }

    /// Sends one body and returns the reply (panics if the daemon closes or does not answer).
    fn call(&mut self, body: &str) -> Value {
        let mut msg = Vec::new();
        frame_message(&mut msg, body.as_bytes());
        self.stream
            .write_all(&msg)
            .unwrap_or_else(|e| panic!("daemon gone before {body}: {e}"));
        let mut buf = [0u8; 65536];
        loop {
            if let Some(m) = self.dec.next_message().expect("reply size") {
                return serde_json::from_slice(&m).expect("reply is JSON");
            }
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("daemon closed the connection after {body}"),
                Ok(n) => self.dec.push(&buf[..n]),
                Err(e) => panic!("no reply to {body}: {e}"),
            }
        }
    }
}

fn kind(v: &Value) -> &str {
    if v["ok"] == true {
        "ok"
    } else {
        v["error"]["kind"].as_str().unwrap_or("?")
    }
}

/// Request templates: `N` is replaced by the number's JSON text. Each names the field.
fn templates(dir: &Path) -> Vec<(&'static str, String)> {
    let local = r#"{"transport":"local","host":"local0","name":"local0"}"#;
    let src = dir.join("src.txt");
    std::fs::write(&src, b"payload\n").expect("src");
    let put_dest = dir.join("dest.txt");
    let fetch_dest = dir.join("fetched.txt");
    vec![
        (
            "call_timeout",
            format!(r#"{{"id":1,"op":"ping","target":{local},"call_timeout":N}}"#),
        ),
        (
            "timeout",
            format!(r#"{{"id":1,"op":"exec","target":{local},"argv":["true"],"timeout":N}}"#),
        ),
        (
            "call_timeout",
            format!(
                r#"{{"id":1,"op":"exec","target":{local},"shell":"true","call_timeout":N,"timeout":1}}"#
            ),
        ),
        (
            "mode",
            format!(
                r#"{{"id":1,"op":"put","target":{local},"src":{:?},"dest":{:?},"mode":N}}"#,
                src.display().to_string(),
                put_dest.display().to_string()
            ),
        ),
        (
            "call_timeout",
            format!(
                r#"{{"id":1,"op":"fetch","target":{local},"src":{:?},"dest":{:?},"call_timeout":N}}"#,
                src.display().to_string(),
                fetch_dest.display().to_string()
            ),
        ),
        (
            "timeout",
            format!(
                r#"{{"id":1,"op":"call","target":{local},"payload":{{"op":"exec","argv":["true"],"timeout":N}}}}"#
            ),
        ),
        (
            "connect_timeout",
            r#"{"id":1,"op":"ping","target":{"transport":"local","host":"local0","name":"local0","connect_timeout":N}}"#.to_string(),
        ),
        (
            // A valid port starts ssh towards a name that cannot resolve: the call deadline
            // answers it.
            "port",
            r#"{"id":1,"op":"ping","call_timeout":0.5,"target":{"host":"spindle-test.invalid","connect_timeout":1,"port":N,"ssh_extra_args":"-o ConnectionAttempts=1"}}"#.to_string(),
        ),
        ("id", r#"{"id":N,"op":"stats"}"#.to_string()),
    ]
}

/// JSON texts of numbers (and not-numbers) at every edge we know of.
const EDGES: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1",
    "0.5",
    "1e-300",
    "2.5e-5",
    "1e300",
    "-1e300",
    "1e19",
    "1e18",
    "1e400",
    "1.7976931348623157e308",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "4294967295",
    "4294967296",
    "65535",
    "65536",
    "4095",
    "4096",
    "86400",
    "86401",
    "604800",
    "604801",
    "\"NaN\"",
    "\"inf\"",
    "\"-Infinity\"",
    "\"5\"",
    "null",
    "true",
    "[]",
    "{}",
];

/// Sends `body`, checks that an answer came and that the daemon still serves `stats`.
fn survives(c: &mut Raw, daemon: &mut Daemon, field: &str, body: &str) -> Result<Value, String> {
    let r = c.call(body);
    if r["ok"] != true && r["ok"] != false {
        return Err(format!("not a reply to {body}: {r}"));
    }
    if let Ok(Some(st)) = daemon.child.try_wait() {
        return Err(format!("daemon exited ({st}) after {field}: {body}"));
    }
    let s = c.call(r#"{"id":424242,"op":"stats"}"#);
    if s["ok"] != true {
        return Err(format!("stats failed after {body}: {s}"));
    }
    Ok(r)
}

#[test]
fn arbitrary_numbers_in_every_field_never_take_the_daemon_down() {
    let dir = scratch("hostile_numbers");
    let mut daemon = Daemon::start(&dir);
    let mut c = Raw::connect(&daemon.socket);
    let tpl = templates(&dir);

    // The values of issue 13 first, with the answer each must get.
    let expect = [
        (0, "1e300", "call_timeout"),
        (0, "1e19", "call_timeout"),
        (0, "0", "call_timeout"),
        (1, "1e300", "timeout"),
        (1, "-1", "timeout"),
        (1, "1e19", "timeout"),
        (2, "604801", "call_timeout"),
        (3, "4096", "mode"),
        (6, "18446744073709551615", "connect_timeout"),
        (6, "604801", "connect_timeout"),
        (6, "0", "connect_timeout"),
        (7, "0", "port"),
    ];
    for (i, n, field) in expect {
        let body = tpl[i].1.replace('N', n);
        let r = survives(&mut c, &mut daemon, field, &body).unwrap();
        assert_eq!(kind(&r), "bad_request", "{body}: {r}");
        let m = r["error"]["message"].as_str().unwrap_or("");
        assert!(m.contains(field), "the message names {field}: {m}");
    }
    // The agent refuses what the daemon passes through unread (a call's payload).
    for n in ["1e18", "1e300", "-1", "0"] {
        let body = tpl[5].1.replace('N', n);
        let r = survives(&mut c, &mut daemon, "payload timeout", &body).unwrap();
        let m = r["error"]["message"].as_str().unwrap_or("");
        assert!(
            kind(&r) == "remote" && m.starts_with("bad_request"),
            "agent answers bad_request to exec timeout {n}: {r}"
        );
    }
    // Valid values still work.
    let r = survives(
        &mut c,
        &mut daemon,
        "timeout",
        &tpl[1].1.replace('N', "604800"),
    )
    .unwrap();
    assert_eq!(kind(&r), "ok", "{r}");
    let r = survives(&mut c, &mut daemon, "mode", &tpl[3].1.replace('N', "420")).unwrap();
    assert_eq!(kind(&r), "ok", "{r}");

    // Every edge value in every field.
    for (field, t) in &tpl {
        for n in EDGES {
            let body = t.replace('N', n);
            survives(&mut c, &mut daemon, field, &body).unwrap();
        }
    }

    // Arbitrary numbers: floats (any bit pattern that JSON can carry), u64, i64.
    let number = prop_oneof![
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..1_000_000).prop_map(|n| n.to_string()),
        (-1e7f64..1e7).prop_map(|f| format!("{f}")),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let state = std::cell::RefCell::new((c, daemon));
    runner
        .run(&(0..tpl.len(), number), |(i, n)| {
            let (field, t) = &tpl[i];
            let (c, daemon) = &mut *state.borrow_mut();
            survives(c, daemon, field, &t.replace('N', &n))
                .map(|_| ())
                .map_err(TestCaseError::fail)
        })
        .unwrap();
}

#[test]
fn nul_bytes_arrays_and_env_names_are_bad_requests() {
    let dir = scratch("hostile_strings");
    let mut daemon = Daemon::start(&dir);
    let mut c = Raw::connect(&daemon.socket);
    let local = target(&local_specs(1)[0]);
    let exec = |extra: Value| {
        let mut v = json!({"id": 7, "op": "exec", "target": local.clone()});
        for (k, x) in extra.as_object().expect("object").iter() {
            v[k] = x.clone();
        }
        v.to_string()
    };
    let cases = [
        ("argv", exec(json!({"argv": ["echo", "a\u{0}b"]}))),
        ("shell", exec(json!({"shell": "echo \u{0}"}))),
        (
            "env",
            exec(json!({"shell": "true", "env": {"A": "x\u{0}y"}})),
        ),
        ("env", exec(json!({"shell": "true", "env": {"A=B": "1"}}))),
        ("env", exec(json!({"shell": "true", "env": [["A", "1"]]}))),
        ("cwd", exec(json!({"shell": "true", "cwd": "/tmp\u{0}x"}))),
        (
            "target",
            exec(json!({"shell": "true", "target": ["local", "local0"]})),
        ),
        (
            "target.via",
            exec(json!({"shell": "true", "target": {"host": "h", "via": ["local"]}})),
        ),
        (
            "target",
            exec(json!({"shell": "true", "target": {"transport": "local", "name": "l\u{0}"}})),
        ),
        (
            "target",
            exec(json!({"shell": "true", "target": {"host": "h", "ssh_extra_args": "-o\u{0}x"}})),
        ),
        (
            "payload",
            json!({"id": 7, "op": "call", "target": local.clone(), "payload": [{"op": "ping"}]})
                .to_string(),
        ),
        ("request", json!([7, "stats"]).to_string()),
    ];
    for (field, body) in &cases {
        let r = survives(&mut c, &mut daemon, field, body).unwrap();
        assert_eq!(kind(&r), "bad_request", "{body}: {r}");
        let m = r["error"]["message"].as_str().unwrap_or("");
        assert!(m.contains(field), "the message names {field}: {m}");
    }
    // NUL through `call` reaches the agent, which refuses it too.
    for payload in [
        json!({"op": "exec", "argv": ["echo", "\u{0}"]}),
        json!({"op": "exec", "shell": "true", "env": {"A": "\u{0}"}}),
        json!({"op": "exec", "shell": "true", "cwd": "\u{0}"}),
    ] {
        let body = json!({"id": 8, "op": "call", "target": local.clone(), "payload": payload});
        let r = survives(&mut c, &mut daemon, "payload", &body.to_string()).unwrap();
        let m = r["error"]["message"].as_str().unwrap_or("");
        assert!(
            kind(&r) == "remote" && m.starts_with("bad_request"),
            "{payload}: {r}"
        );
    }
    let r = c.call(&exec(json!({"argv": ["echo", "still here"]})));
    assert_eq!(b64(&r["result"], "stdout_b64"), "still here\n", "{r}");
}
