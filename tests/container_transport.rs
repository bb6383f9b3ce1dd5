//! docker/podman transports: the agent starts through `<engine> [extra args] exec -i [-u USER]
//! CONTAINER /bin/sh -c STAGE0`. No container engine runs on this machine, so the engine is a
//! stand-in script that checks the argv it gets and runs the command on the host; everything
//! else (bootstrap, agent, calls) is real. A missing container fails with the engine's message.

mod common;
use common::*;
use serde_json::json;
use spindle::client::ClientError;
use std::os::unix::fs::PermissionsExt;

/// Stand-in for docker/podman, shared with tests/ansible/test_plugins.py.
const FAKE_ENGINE: &str = include_str!("fixtures/fake-container-engine.sh");

#[test]
fn docker_and_podman_exec_into_the_container() {
    let dir = scratch("container_transport");
    for engine in ["docker", "podman"] {
        let path = dir.join(engine);
        std::fs::write(&path, FAKE_ENGINE).expect("write fake engine");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    for engine in ["docker", "podman"] {
        let t = json!({"transport": engine, "host": format!("box-{engine}"), "user": "root",
            "executable": dir.join(engine), "extra_args": "--log-level error"});
        let v = c
            .call(json!({"op": "exec", "target": t, "shell": "echo via $0"}))
            .expect("exec through the container transport");
        assert_eq!(b64(&v, "stdout_b64"), "via /bin/sh\n");
        let p1 = c.call(json!({"op": "ping", "target": t})).expect("ping")["pid"].clone();
        let p2 = c.call(json!({"op": "ping", "target": t})).expect("ping")["pid"].clone();
        assert_eq!(p1, p2, "one persistent agent per container");

        let gone = json!({"transport": engine, "host": "nope", "executable": dir.join(engine)});
        match c.call(json!({"op": "ping", "target": gone})) {
            Err(ClientError::Api { message, .. }) => {
                assert!(message.contains("No such container: nope"), "{message}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }
    let log = std::fs::read_to_string(dir.join("calls.log")).expect("calls.log");
    assert!(
        log.contains("--log-level error exec -i -u root box-docker /bin/sh -c"),
        "{log}"
    );
    assert!(
        log.contains("exec -i -u root box-podman /bin/sh -c"),
        "{log}"
    );
}
