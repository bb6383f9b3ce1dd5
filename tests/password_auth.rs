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

/// The password never sits in ssh's environment (which a ProxyCommand and anything else ssh
/// starts inherit): the askpass helper reads it once from a private file, which is gone after
/// that read, and gone anyway once the connection ended, also when ssh never asked.
#[test]
fn the_password_is_not_in_the_environment_of_ssh() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = scratch("password_env");
    let fake = dir.join("fake-ssh");
    std::fs::write(
        &fake,
        r#"#!/bin/sh
if [ -n "$NOASK" ]; then
  env > "$OUT/env-noask"
  echo "ssh: connect to host fakehost port 22: Connection refused" >&2
  exit 255
fi
env > "$OUT/env"
ls -ld "$(dirname "$SPINDLE_ASKPASS_FILE")" > "$OUT/dir-mode"
"$SSH_ASKPASS" "(yes/no/[fingerprint])?" > "$OUT/answer0"; echo "$?" > "$OUT/rc0"
"$SSH_ASKPASS" "fakehost's password: " > "$OUT/answer1"; echo "$?" > "$OUT/rc1"
"$SSH_ASKPASS" "fakehost's password: " > "$OUT/answer2"; echo "$?" > "$OUT/rc2"
echo "fakehost: Permission denied (password)." >&2
exit 255
"#,
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let secret = "s3cret-PW-in-env?";
    let spec = |noask: bool| {
        let mut env = json!({"OUT": dir});
        if noask {
            env["NOASK"] = "1".into();
        }
        json!({"host": "fakehost", "name": format!("fake{noask}"), "password": secret,
               "ssh_executable": fake, "env": env})
    };
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let file_of = |env: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix("SPINDLE_ASKPASS_FILE="))
            .map(std::path::PathBuf::from)
            .expect("SPINDLE_ASKPASS_FILE in ssh's environment")
    };
    let gone_soon = |p: &std::path::Path| {
        for _ in 0..100 {
            if !p.exists() && !p.parent().is_some_and(|d| d.exists()) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    };

    match c.call(json!({"op": "ping", "target": spec(false)})) {
        Err(ClientError::Api { kind, .. }) => assert_eq!(kind, "auth_failed"),
        other => panic!("the fake ssh fails: {other:?}"),
    }
    let env = read("env");
    assert!(
        !env.contains(secret),
        "the password is in ssh's environment"
    );
    assert!(
        read("dir-mode").starts_with("drwx------"),
        "{}",
        read("dir-mode")
    );
    assert_eq!(
        read("rc0").trim(),
        "1",
        "a yes/no question gets no password"
    );
    assert_eq!(read("answer0"), "");
    assert_eq!(
        (read("rc1").trim(), read("answer1")),
        ("0", format!("{secret}\n"))
    );
    assert_eq!(read("rc2").trim(), "1", "the password is handed out once");
    assert_eq!(read("answer2"), "");
    let file = file_of(&env);
    assert!(
        gone_soon(&file),
        "{} and its directory are removed",
        file.display()
    );

    // ssh never asks (refused): the daemon removes the file when the connection ends.
    match c.call(json!({"op": "ping", "target": spec(true)})) {
        Err(ClientError::Api { kind, .. }) => assert_eq!(kind, "unreachable"),
        other => panic!("the fake ssh fails: {other:?}"),
    }
    let env = read("env-noask");
    assert!(!env.contains(secret));
    let file = file_of(&env);
    assert!(
        gone_soon(&file),
        "{} and its directory are removed",
        file.display()
    );
}
