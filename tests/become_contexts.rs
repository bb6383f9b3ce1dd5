//! Become contexts (nested agents started through a become command by the target's agent):
//! reused across calls, held back until they run, limited per target with the least recently
//! used idle one closed, and failing alone (the stream and other contexts carry on).
//! Real `sudo` from the root-run local agent, so no password is asked (the password paths run
//! against sshd targets in tests/ansible/test_become.py).

mod common;
use common::*;
use serde_json::{json, Value};
use spindle::client::ClientError;

fn sudo_spec(base: &Value, user: &str) -> Value {
    let mut t = base.clone();
    t["become"] = json!({
        "method": "sudo", "user": user, "flags": "-H -S -n",
        "cmd": format!("sudo -H -S -n -u {user} /bin/sh -c 'echo SPINDLE-MARK-1 ; __SPINDLE_BOOT__'"),
        "success": "SPINDLE-MARK-1",
    });
    t
}

fn pid(c: &mut spindle::client::Client, t: &Value) -> u64 {
    let v = c.call(json!({"op": "ping", "target": t})).expect("ping");
    v["pid"].as_u64().expect("pid")
}

fn whoami(c: &mut spindle::client::Client, t: &Value) -> String {
    let v = c
        .call(json!({"op": "exec", "target": t, "argv": ["id", "-un"]}))
        .expect("exec");
    b64(&v, "stdout_b64").trim().to_string()
}

#[test]
fn become_contexts_reused_recycled_and_isolated() {
    if !can_sudo() {
        println!("SKIP: needs root and /usr/bin/sudo (scripts/setup.sh installs sudo)");
        return;
    }
    let dir = scratch("become_contexts");
    let daemon = Daemon::start_with(&dir, &["--max-interpreters", "2"]);
    let mut c = daemon.client();
    let base = target(&local_specs(1)[0]);
    let root_pid = pid(&mut c, &base);

    // Calls sent before the context runs are held back, then all answered.
    let nobody = sudo_spec(&base, "nobody");
    let ids: Vec<u64> = (0..5)
        .map(|_| {
            c.send(json!({"op": "exec", "target": nobody, "argv": ["id", "-un"]}))
                .expect("send")
        })
        .collect();
    for _ in &ids {
        let r = c.recv().expect("recv");
        let v = r.result.expect("exec in a fresh context");
        assert_eq!(b64(&v, "stdout_b64").trim(), "nobody");
    }
    // Reused: same nested agent, not the stream's own.
    let p1 = pid(&mut c, &nobody);
    assert_eq!(pid(&mut c, &nobody), p1);
    assert_ne!(p1, root_pid);

    // A third context beyond the limit of two closes the least recently used idle one.
    let daemon_user = sudo_spec(&base, "daemon");
    assert_eq!(whoami(&mut c, &daemon_user), "daemon");
    let bin = sudo_spec(&base, "bin");
    assert_eq!(whoami(&mut c, &bin), "bin");
    let stats = c.call(json!({"op": "stats"})).expect("stats");
    assert_eq!(stats["counters"]["recycled"], 1, "{stats}");
    assert_ne!(pid(&mut c, &nobody), p1, "nobody's context was the LRU one");
    assert_eq!(
        pid(&mut c, &base),
        root_pid,
        "the stream itself is never recycled"
    );

    // A context that dies fails its own calls only (`agent_ended`, with how it ended); the
    // next call starts a new one.
    let b1 = pid(&mut c, &bin);
    let killed = c.call(json!({"op": "exec", "target": bin, "shell": "kill -9 $PPID; sleep 5"}));
    match killed {
        Err(ClientError::Api { kind, message, .. }) => {
            assert_eq!(kind, "agent_ended");
            assert!(message.starts_with("nested agent ended ("), "{message}");
        }
        other => panic!("expected agent_ended, got {other:?}"),
    }
    assert_eq!(pid(&mut c, &base), root_pid);
    assert_ne!(pid(&mut c, &bin), b1);
    assert_eq!(whoami(&mut c, &bin), "bin");

    // A become command that fails says why, and costs nothing else.
    let mut bad = base.clone();
    bad["become"] = json!({"method": "sudo", "user": "x", "success": "SPINDLE-MARK-1",
        "cmd": "echo 'sudo: a password is required' >&2; exit 1; __SPINDLE_BOOT__"});
    match c.call(json!({"op": "ping", "target": bad})) {
        Err(ClientError::Api { kind, message, .. }) => {
            assert_eq!(kind, "become_failed");
            // What the command said, as JSON (rc, stdout, stderr) for the Ansible plugin to
            // report as stock does.
            let (_, out) = message.split_once("exited: ").expect("an exited reason");
            let out: serde_json::Value = serde_json::from_str(out).expect("JSON");
            assert_eq!(out["rc"], 1, "{message}");
            assert_eq!(out["stderr"], "sudo: a password is required\n", "{message}");
        }
        other => panic!("expected become_failed, got {other:?}"),
    }
    // Malformed become specs are refused before anything starts.
    let mut no_boot = base.clone();
    no_boot["become"] = json!({"method": "sudo", "user": "x", "success": "M", "cmd": "true"});
    match c.call(json!({"op": "ping", "target": no_boot})) {
        Err(ClientError::Api { kind, .. }) => assert_eq!(kind, "bad_request"),
        other => panic!("expected bad_request, got {other:?}"),
    }
    assert_eq!(pid(&mut c, &base), root_pid);

    // Closing the stream closes its contexts.
    c.call(json!({"op": "close", "target": base}))
        .expect("close");
    assert_ne!(pid(&mut c, &base), root_pid);
    assert_eq!(whoami(&mut c, &daemon_user), "daemon");
}
