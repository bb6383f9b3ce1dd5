//! Failures are per target and typed: a target whose sshd or agent is killed mid-run fails with
//! `connection_lost` while the others finish; connection set-up failures are classified
//! (unreachable, auth_failed, host_key_mismatch, no_python, timeout); the daemon keeps serving.

mod common;
use common::*;
use serde_json::json;
use spindle::client::{Client, ClientError};
use std::collections::HashMap;
use std::time::Duration;

fn kind_of(r: &Result<serde_json::Value, ClientError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(ClientError::Api { kind, .. }) => kind.clone(),
        Err(e) => format!("client error {e}"),
    }
}

fn ping_all(
    c: &mut Client,
    specs: &[spindle::transport::Spec],
) -> Vec<Result<serde_json::Value, ClientError>> {
    let ids: Vec<u64> = specs
        .iter()
        .map(|s| c.send(json!({"op": "ping", "target": target(s)})).unwrap())
        .collect();
    let mut got: HashMap<u64, _> = HashMap::new();
    for _ in &ids {
        let r = c.recv().unwrap();
        got.insert(r.id, r.result);
    }
    ids.iter().map(|i| got.remove(i).unwrap()).collect()
}

#[test]
fn killing_one_target_mid_run_fails_only_that_target() {
    let Some(fleet) = Fleet::up("flt", 6) else {
        return;
    };
    let dir = scratch("faults_kill");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let pings = ping_all(&mut c, &fleet.specs);
    assert!(pings.iter().all(|r| r.is_ok()), "{pings:?}");
    let agent_pid_3 = pings[3].as_ref().unwrap()["pid"].as_u64().unwrap();

    let mut ids = HashMap::new();
    for (i, s) in fleet.specs.iter().enumerate() {
        let id = c
            .send(json!({"op": "exec", "target": target(s), "shell": "sleep 3; echo done"}))
            .unwrap();
        ids.insert(id, i);
    }
    std::thread::sleep(Duration::from_millis(1000));
    fleet.kill_sshd(2); // sshd and its sessions die: the connection drops
    let _ = std::process::Command::new("kill")
        .args(["-9", &agent_pid_3.to_string()])
        .status(); // only the agent dies

    let mut res: HashMap<usize, Result<serde_json::Value, ClientError>> = HashMap::new();
    for _ in 0..fleet.specs.len() {
        let r = c.recv().unwrap();
        res.insert(ids[&r.id], r.result);
    }
    for i in 0..6 {
        match i {
            2 | 3 => {
                // sshd killed: ssh says the connection closed. Only the agent killed: ssh
                // says nothing, which the Ansible plugin checks with a ping.
                let want = if i == 2 {
                    "connection_lost"
                } else {
                    "agent_ended"
                };
                assert_eq!(kind_of(&res[&i]), want, "target {i}: {:?}", res[&i]);
                let msg = res[&i].as_ref().unwrap_err().to_string();
                assert!(
                    msg.contains(&fleet.specs[i].label()),
                    "error names the host: {msg}"
                );
            }
            _ => {
                let v = res[&i].as_ref().expect("healthy target finishes");
                assert_eq!(b64(v, "stdout_b64"), "done\n");
            }
        }
    }

    // The daemon keeps serving: healthy targets reuse their streams; target 3's sshd is alive,
    // so a new agent starts; target 2's sshd is gone, so it is unreachable.
    let again = ping_all(&mut c, &fleet.specs);
    for (i, r) in again.iter().enumerate() {
        let want = if i == 2 { "unreachable" } else { "ok" };
        assert_eq!(kind_of(r), want, "target {i}: {r:?}");
    }
    let stats = c.call(json!({"op": "stats"})).unwrap();
    assert_eq!(stats["streams"], 5);
}

#[test]
fn connection_failures_are_classified() {
    let Some(fleet) = Fleet::up("cls", 2) else {
        return;
    };
    let dir = scratch("faults_classify");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let good = fleet.specs[0].clone();

    // auth_failed: a key the target does not know
    let key = dir.join("stranger_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let mut auth = good.clone();
    auth.identity_file = Some(key.display().to_string());
    auth.ssh_extra_args = Some("-o IdentitiesOnly=yes".into());

    // host_key_mismatch: a known_hosts file holding another key for that address
    let kh = dir.join("wrong_known_hosts");
    let pubkey = std::fs::read_to_string(dir.join("stranger_key.pub")).unwrap();
    let mut parts = pubkey.split_whitespace();
    let (kt, kb) = (parts.next().unwrap(), parts.next().unwrap());
    std::fs::write(
        &kh,
        format!("{} {kt} {kb}\n", good.host.as_deref().unwrap()),
    )
    .unwrap();
    let mut hostkey = good.clone();
    hostkey.ssh_common_args = Some(format!(
        "-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o GlobalKnownHostsFile=/dev/null",
        kh.display()
    ));

    // no_python: no interpreter the agent can start with (a named one that is missing falls
    // back to discovery; here discovery finds none either: an empty PATH)
    let nopy = spindle::transport::Spec {
        transport: spindle::transport::TransportKind::Local,
        name: Some("nopy".into()),
        python: Some("/nonexistent/python3".into()),
        env: Some([("PATH".to_string(), "/nonexistent".to_string())].into()),
        ..Default::default()
    };

    // unreachable: target 1's sshd is gone
    fleet.kill_sshd(1);
    let unreach = fleet.specs[1].clone();

    // timeout: a TCP port that accepts but never speaks SSH
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut tmo = good.clone();
    tmo.host = Some("127.0.0.1".into());
    tmo.port = Some(silent.local_addr().unwrap().port());
    tmo.connect_timeout = Some(2);
    tmo.name = Some("silent".into());

    let cases = [
        (auth, "auth_failed"),
        (hostkey, "host_key_mismatch"),
        (nopy, "no_python"),
        (unreach, "unreachable"),
        (tmo, "timeout"),
        (good, "ok"),
    ];
    let mut ids = HashMap::new();
    for (i, (s, _)) in cases.iter().enumerate() {
        ids.insert(
            c.send(json!({"op": "ping", "target": target(s)})).unwrap(),
            i,
        );
    }
    for _ in 0..cases.len() {
        let r = c.recv().unwrap();
        let i = ids[&r.id];
        assert_eq!(kind_of(&r.result), cases[i].1, "case {i}: {:?}", r.result);
        if let Err(e) = &r.result {
            eprintln!("{}: {e}", cases[i].1);
        }
    }
}

#[test]
fn bad_requests_get_clear_errors_and_the_daemon_carries_on() {
    let dir = scratch("faults_bad_requests");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let local = &local_specs(1)[0];
    let bad = [
        json!({"op": "nope", "target": target(local)}),
        json!({"op": "exec", "target": target(local)}),
        json!({"op": "exec", "target": target(local), "argv": ["true"], "shell": "true"}),
        json!({"op": "put", "target": target(local), "src": "/nonexistent/file", "dest": "/x"}),
        json!({"op": "ping"}),
        json!({"op": "ping", "target": {"transport": "carrier-pigeon"}}),
        json!({"op": "exec", "target": target(local), "argv": ["true"], "bogus_field": 1}),
    ];
    for req in bad {
        let r = c.call(req.clone());
        assert!(
            matches!(r, Err(ClientError::Api { ref kind, .. }) if kind == "bad_request" || kind == "local_io"),
            "{req}: {r:?}"
        );
    }
    // A host name that would be an ssh option is refused before ssh runs, as unreachable as
    // stock ssh makes it (Ansible: UNREACHABLE, not FAILED).
    let req = json!({"op": "ping", "target": {"transport": "ssh", "host": "-oProxyCommand=evil"}});
    let r = c.call(req.clone());
    assert!(
        matches!(r, Err(ClientError::Api { ref kind, ref message, .. }) if kind == "unreachable" && message.contains("invalid host name")),
        "{req}: {r:?}"
    );
    // Raw garbage: a non-JSON body gets an error reply; an oversize length closes the client.
    use std::io::{Read, Write};
    let mut raw = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    raw.write_all(&5u32.to_be_bytes()).unwrap();
    raw.write_all(b"hello").unwrap();
    let mut len = [0u8; 4];
    raw.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    raw.read_exact(&mut body).unwrap();
    assert!(String::from_utf8_lossy(&body).contains("bad_request"));
    raw.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest); // error reply then EOF
                                        // Still serving.
    let v = c
        .call(json!({"op": "exec", "target": target(local), "argv": ["echo", "still here"]}))
        .unwrap();
    assert_eq!(b64(&v, "stdout_b64"), "still here\n");
}

#[test]
fn a_failed_start_quotes_the_reason_not_ssh_noise() {
    // An "interpreter" that fails the way a real start does over ssh: the reason, then ssh's
    // host-key notice as the last line of stderr.
    let dir = scratch("faults_reason_line");
    let py = dir.join("fakepy");
    std::fs::write(
        &py,
        "#!/bin/sh\necho 'fakepy: cannot import encodings (the real reason)' >&2\n\
         echo \"Warning: Permanently added 'web1' (ED25519) to the list of known hosts.\" >&2\n\
         exit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&py, std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let spec = json!({"transport": "local", "name": "noisy", "python": py});
    let r = c.call(json!({"op": "ping", "target": spec}));
    let Err(ClientError::Api { kind, message, .. }) = r else {
        panic!("the start must fail: {r:?}");
    };
    assert_eq!(kind, "connection_lost");
    assert!(
        message.contains("the real reason") && !message.contains("Permanently added"),
        "{message}"
    );
}
