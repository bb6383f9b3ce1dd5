//! ssh password authentication against a real sshd: the password reaches ssh through spindle's
//! SSH_ASKPASS helper (never on a command line); a wrong password is `auth_failed`.

mod common;
use common::*;
use serde_json::json;
use spindle::client::ClientError;
use std::process::Command;

const USER: &str = "spindlepw";
const PASSWORD: &str = "c0rrect-horse-spindle";

struct TestUser;
impl TestUser {
    fn create() -> Option<TestUser> {
        let _ = Command::new("userdel").arg(USER).output();
        let ok = Command::new("useradd")
            .args(["-M", "-d", "/tmp", "-s", "/bin/sh", USER])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("SKIP: cannot create a test user (not root?)");
            return None;
        }
        let mut p = Command::new("chpasswd")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        use std::io::Write;
        p.stdin
            .take()?
            .write_all(format!("{USER}:{PASSWORD}\n").as_bytes())
            .ok()?;
        assert!(p.wait().ok()?.success());
        Some(TestUser)
    }
}
impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(USER).output();
    }
}

#[test]
fn password_authentication_through_askpass() {
    let Some(fleet) = Fleet::up("pw", 1) else {
        return;
    };
    let Some(_user) = TestUser::create() else {
        return;
    };
    let spec = fleet.specs[0].clone();
    let ip = spec.host.clone().unwrap();
    let fleet_dir = format!("/run/spindle-fleet/{}", fleet.name);
    // A second sshd in the target, on port 2222, that accepts passwords for the test user only.
    let o = fleet.script(&[
        "exec",
        &fleet.name,
        "0",
        "/usr/sbin/sshd",
        "-f",
        &format!("{fleet_dir}/sshd_config"),
        "-o",
        &format!("ListenAddress={ip}:2222"),
        "-o",
        "PasswordAuthentication=yes",
        "-o",
        "KbdInteractiveAuthentication=no",
        "-o",
        &format!("AllowUsers={USER}"),
        "-o",
        &format!("PidFile={fleet_dir}/sshd-pw.pid"),
    ]);
    assert!(
        o.status.success(),
        "second sshd: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut target_spec = spec.clone();
    target_spec.port = Some(2222);
    target_spec.user = Some(USER.into());
    target_spec.identity_file = None;
    target_spec.password = Some(PASSWORD.into());
    target_spec.ssh_extra_args = Some("-o PubkeyAuthentication=no".into());

    let dir = scratch("password_auth");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    // sshd may need a moment to listen.
    let mut last = None;
    for _ in 0..50 {
        match c.call(json!({"op": "exec", "target": target(&target_spec), "argv": ["id", "-un"]})) {
            Ok(v) => {
                last = Some(v);
                break;
            }
            Err(ClientError::Api { kind, .. }) if kind == "unreachable" => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => panic!("password login failed: {e}"),
        }
    }
    let v = last.expect("sshd on 2222 never answered");
    assert_eq!(b64(&v, "stdout_b64"), format!("{USER}\n"));

    let mut wrong = target_spec.clone();
    wrong.password = Some("not-the-password".into());
    match c.call(json!({"op": "ping", "target": target(&wrong)})) {
        Err(ClientError::Api { kind, .. }) => assert_eq!(kind, "auth_failed"),
        other => panic!("wrong password must fail: {other:?}"),
    }
}
