//! The chroot and setns transports, for real: an agent started with `chroot DIR` in a tree
//! made of read-only bind mounts (sees only that tree), and one started with `nsenter` into a
//! namespace-fleet target's namespaces (its hostname, network and private /tmp). The other
//! enter transports (buildah, lxc, lxd, incus, kubectl, jail, machinectl) have no engine here:
//! their command lines are unit-tested (src/transport/enter.rs) and all but machinectl run
//! through stand-in tools (tests/enter_standins.rs).

mod common;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A chroot tree: /usr and /etc bound read-only, a /dev/null node (nothing writable of the
/// host is mounted in it), a tmpfs /tmp, merged-usr links.
struct ChrootTree {
    root: PathBuf,
}

impl ChrootTree {
    fn make(root: &Path) -> Option<ChrootTree> {
        let r = root.display();
        let ok = sh(&format!(
            "set -e; mkdir -p {r}/usr {r}/etc {r}/dev {r}/tmp {r}/proc
             for l in bin sbin lib lib64; do [ -e /$l ] && ln -sfn usr/$l {r}/$l; done
             mount --bind /usr {r}/usr && mount -o remount,bind,ro {r}/usr
             mount --bind /etc {r}/etc && mount -o remount,bind,ro {r}/etc
             [ -e {r}/dev/null ] || mknod -m 666 {r}/dev/null c 1 3
             mount -t tmpfs -o size=16m spindle-chroot {r}/tmp
             echo inside-the-chroot > {r}/marker.txt"
        ));
        let tree = ChrootTree { root: root.into() };
        ok.then_some(tree)
    }
}

impl Drop for ChrootTree {
    fn drop(&mut self) {
        let r = self.root.display();
        sh(&format!(
            "for m in tmp etc usr; do umount -l {r}/$m 2>/dev/null; done; true"
        ));
    }
}

#[test]
fn chroot_and_setns_agents() {
    if !rustix::process::geteuid().is_root() {
        println!("SKIP: chroot and nsenter need root");
        return;
    }
    let dir = scratch("enter_transports");
    let tree_dir = dir.join("tree");
    let _ = std::fs::create_dir_all(&tree_dir);
    let Some(tree) = ChrootTree::make(&tree_dir) else {
        panic!("could not build the chroot tree with bind mounts");
    };
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();

    // chroot: the agent sees the tree, not the host.
    let t = json!({"transport": "chroot", "host": tree.root, "python": "/usr/bin/python3"});
    let v = c
        .call(json!({"op": "exec", "target": t, "shell": "cat /marker.txt; test -e /work && echo host-visible; echo done"}))
        .expect("exec in the chroot");
    assert_eq!(b64(&v, "stdout_b64"), "inside-the-chroot\ndone\n");
    let hello = c.call(json!({"op": "ping", "target": t})).expect("ping");
    assert_eq!(hello["hello"]["executable"], "/usr/bin/python3", "{hello}");

    // setns: into a fleet target's namespaces, by its sshd's pid.
    let Some(fleet) = Fleet::up("ens", 1) else {
        return;
    };
    let pid_file = format!("/run/spindle-fleet/{}/sshd-0.pid", fleet.name);
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{pid_file}: {e}"))
        .trim()
        .to_string();
    let mark = fleet.script(&[
        "exec",
        "ens",
        "0",
        "sh",
        "-c",
        "echo private > /tmp/ens-mark",
    ]);
    assert!(mark.status.success(), "{mark:?}");
    let t = json!({"transport": "setns", "host": pid, "python": "/usr/bin/python3"});
    let v = c
        .call(json!({"op": "exec", "target": t, "shell": "hostname; cat /tmp/ens-mark"}))
        .expect("exec in the target's namespaces");
    assert_eq!(b64(&v, "stdout_b64"), "sp-ens-0\nprivate\n");
    assert!(
        !Path::new("/tmp/ens-mark").exists(),
        "the mark went to the host's /tmp"
    );
}
