//! The enter transports with no engine on this machine (kubectl, lxd, incus, buildah, jail,
//! lxc), one test each: the agent starts through a stand-in for the tool
//! (tests/fixtures/fake-enter-tool.sh) that checks the part of its argv naming where the
//! command runs (pod, namespace, container, remote:instance, project, user, jail) against an
//! `expect` file, logs it and runs the command on this machine; everything else (bootstrap,
//! agent, calls) is real. A target the stand-in does not know fails with its message.

mod common;
use common::*;
use serde_json::{json, Value};
use spindle::client::ClientError;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Stand-in for the tools, shared with tests/ansible/test_enter_routes.py.
const FAKE_TOOL: &str = include_str!("fixtures/fake-enter-tool.sh");

/// A scratch dir holding the stand-ins under `tools` and an `expect` file of `lines`.
fn standins(name: &str, tools: &[&str], lines: &[&str]) -> PathBuf {
    let dir = scratch(name);
    for t in tools {
        let path = dir.join(t);
        std::fs::write(&path, FAKE_TOOL).expect("write stand-in");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    std::fs::write(dir.join("expect"), lines.join("\n") + "\n").expect("expect file");
    dir
}

fn log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Runs a command through `t`, pings twice (one persistent agent), runs each of `more`
/// (shell, expected stdout), then tries a target the stand-in refuses; returns its log.
fn check(dir: &Path, t: Value, wrong: Value, more: &[(&str, &str)]) -> Vec<String> {
    let daemon = Daemon::start(dir);
    let mut c = daemon.client();
    let v = c
        .call(json!({"op": "exec", "target": t, "shell": "echo via $0; pwd"}))
        .expect("exec through the stand-in");
    assert_eq!(
        b64(&v, "stdout_b64"),
        format!("via /bin/sh\n{}\n", dir.display())
    );
    let p1 = c.call(json!({"op": "ping", "target": t})).expect("ping")["pid"].clone();
    let p2 = c.call(json!({"op": "ping", "target": t})).expect("ping")["pid"].clone();
    assert_eq!(p1, p2, "one persistent agent per target");
    for (shell, want) in more {
        let v = c
            .call(json!({"op": "exec", "target": t, "shell": shell}))
            .expect("exec");
        assert_eq!(b64(&v, "stdout_b64"), *want, "{shell}");
    }
    match c.call(json!({"op": "ping", "target": wrong})) {
        Err(ClientError::Api { message, .. }) => {
            assert!(message.contains("stand-in"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let log = log(dir);
    assert!(log.iter().any(|l| l.starts_with("REFUSED ")), "{log:?}");
    log
}

#[test]
fn kubectl_pod_namespace_container_kubeconfig_env() {
    let want = "kubectl -n ns1 --kubeconfig /k/conf --context c1 --v=2 exec -i pod-1 -c web \
                [ENTER_STANDIN_TAG=k1]";
    let dir = standins("enter_kubectl", &["kubectl"], &[want]);
    let t = json!({"transport": "kubectl", "host": "pod-1", "container": "web",
        "executable": dir.join("kubectl"),
        "extra_args": "-n ns1 --kubeconfig /k/conf --context c1 --v=2",
        "env": {"ENTER_STANDIN_TAG": "k1"}});
    let mut wrong = t.clone();
    wrong["extra_args"] = json!("-n other");
    let log = check(&dir, t, wrong, &[]);
    assert_eq!(log[0], want);
}

#[test]
fn lxd_remote_project_and_user() {
    let dir = standins(
        "enter_lxd",
        &["lxc", "su"],
        &["lxc --project p1 exec r1:c1", "su app"],
    );
    let t = json!({"transport": "lxd", "host": "r1:c1", "user": "app", "su": dir.join("su"),
        "executable": dir.join("lxc"), "extra_args": "--project p1"});
    let wrong = json!({"transport": "lxd", "host": "local:c1", "executable": dir.join("lxc")});
    let log = check(&dir, t, wrong, &[]);
    assert_eq!(log[..2], ["lxc --project p1 exec r1:c1", "su app"]);
}

#[test]
fn incus_remote_and_project_as_root() {
    let want = "incus --project default exec local:c2";
    let dir = standins("enter_incus", &["incus"], &[want]);
    let t = json!({"transport": "incus", "host": "local:c2", "user": "root",
        "executable": dir.join("incus"), "extra_args": "--project default"});
    let mut wrong = t.clone();
    wrong["host"] = json!("local:c3");
    let log = check(&dir, t, wrong, &[]);
    assert_eq!(log[0], want, "root runs without su");
}

#[test]
fn buildah_container_and_user() {
    let want = "buildah run --user app wc1";
    let dir = standins("enter_buildah", &["buildah"], &[want]);
    let t = json!({"transport": "buildah", "host": "wc1", "user": "app",
        "executable": dir.join("buildah")});
    let wrong = json!({"transport": "buildah", "host": "wc1", "executable": dir.join("buildah")});
    let log = check(&dir, t, wrong, &[]);
    assert_eq!(log[0], want);
}

#[test]
fn jail_name_and_user() {
    let want = "jexec -U app www";
    let dir = standins("enter_jail", &["jexec"], &[want]);
    let t = json!({"transport": "jail", "host": "www", "user": "app",
        "executable": dir.join("jexec")});
    let mut wrong = t.clone();
    wrong["host"] = json!("db");
    // like community.general.jail: HOME is the jail user's (no user app here: ~app stays)
    let log = check(&dir, t, wrong, &[("echo $HOME", "~app\n")]);
    assert_eq!(log[0], want);
}

#[test]
fn lxc_attach_name_and_clear_env() {
    let want = "lxc-attach --clear-env --name c1";
    let dir = standins("enter_lxc", &["lxc-attach"], &[want]);
    let t = json!({"transport": "lxc", "host": "c1", "extra_args": "--clear-env",
        "executable": dir.join("lxc-attach")});
    let mut wrong = t.clone();
    wrong["host"] = json!("c2");
    // the stock plugin attaches with LXC_ATTACH_CLEAR_ENV
    let more = [("echo ${container}-${HOME:-nohome}", "lxc-nohome\n")];
    let log = check(&dir, t, wrong, &more);
    assert_eq!(log[0], want);
}
