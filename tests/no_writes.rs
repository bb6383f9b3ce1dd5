//! Bootstrap, ping and exec write nothing on the target: each namespace target has private
//! /tmp, /var/tmp and /root (the fleet script mounts them), and they must stay as they were.

mod common;
use common::*;
use serde_json::json;

fn listing(fleet: &Fleet, i: usize) -> String {
    let o = fleet.script(&[
        "exec",
        &fleet.name,
        &i.to_string(),
        "find",
        "/tmp",
        "/var/tmp",
        "/root",
        "-xdev",
    ]);
    assert!(
        o.status.success(),
        "exec in target: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bootstrap_ping_and_exec_write_nothing_on_target() {
    let Some(fleet) = Fleet::up("nw", 3) else {
        return;
    };
    let before: Vec<String> = (0..3).map(|i| listing(&fleet, i)).collect();
    let dir = scratch("no_writes");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    for s in &fleet.specs {
        c.call(json!({"op": "ping", "target": target(s)}))
            .expect("ping");
        let v = c
            .call(json!({"op": "exec", "target": target(s), "argv": ["hostname"]}))
            .expect("exec");
        assert_eq!(v["rc"], 0);
        let v = c.call(json!({"op": "exec", "target": target(s), "shell": "cd /tmp && ls >/dev/null; echo $HOME"})).expect("exec");
        assert_eq!(b64(&v, "stdout_b64").trim(), "/root");
    }
    // A sanity check that the listing would see a write: a target-side write shows up.
    let probe = c.call(json!({"op": "exec", "target": target(&fleet.specs[0]), "argv": ["touch", "/tmp/probe"]})).unwrap();
    assert_eq!(probe["rc"], 0);
    for (i, before) in before.iter().enumerate() {
        let after = listing(&fleet, i);
        if i == 0 {
            assert!(
                after.contains("/tmp/probe"),
                "the probe write is visible: {after}"
            );
            assert_eq!(&after.replace("/tmp/probe\n", ""), before);
        } else {
            assert_eq!(&after, before, "target {i} changed");
        }
    }
}
