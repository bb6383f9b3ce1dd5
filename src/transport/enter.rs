//! Transports that enter a container, chroot, jail or namespace with a local command and run
//! the agent's stage 0 there: `<tool> [extra args] <enter> TARGET /bin/sh -c STAGE0`. Each
//! only builds an argv (no shell); the target name comes from `host`, the user (where the
//! tool has one) from `user`, the tool from `executable`, extra words from `extra_args`.

use super::command::{words, CommandError};
use super::{Spec, TransportKind};

fn checked<'a>(spec: &'a Spec, what: &str, v: Option<&'a str>) -> Result<&'a str, CommandError> {
    match v {
        Some(s) if !s.is_empty() && !s.starts_with('-') && !s.contains(char::is_whitespace) => {
            Ok(s)
        }
        other => Err(CommandError::BadSpec {
            host: spec.label(),
            reason: format!("invalid {what} {other:?}"),
        }),
    }
}

/// The argv that runs `stage0` inside the target of `spec`.
pub fn argv(spec: &Spec, stage0: String) -> Result<Vec<String>, CommandError> {
    use TransportKind::*;
    let target = spec.host.as_deref();
    let user = match &spec.user {
        Some(u) => Some(checked(spec, "user name", Some(u))?),
        None => None,
    };
    let tool = |default: &str| spec.executable.clone().unwrap_or_else(|| default.into());
    let extra = words(spec, "extra_args", &spec.extra_args)?;
    let sh = ["/bin/sh".to_string(), "-c".into(), stage0];
    if spec.container.is_some() && spec.transport != TransportKind::Kubectl {
        return Err(CommandError::BadSpec {
            host: spec.label(),
            reason: "container is a kubectl field".into(),
        });
    }
    let mut argv: Vec<String> = Vec::new();
    match spec.transport {
        Docker | Podman => {
            let name = checked(spec, "container name", target)?;
            argv.push(tool(if spec.transport == Docker {
                "docker"
            } else {
                "podman"
            }));
            argv.extend(extra);
            argv.extend(["exec".into(), "-i".into()]);
            if let Some(u) = user {
                argv.extend(["-u".into(), u.into()]);
            }
            argv.push(name.into());
        }
        Buildah => {
            let name = checked(spec, "container name", target)?;
            argv.push(tool("buildah"));
            argv.extend(extra);
            argv.push("run".into());
            if let Some(u) = user {
                argv.extend(["--user".into(), u.into()]);
            }
            argv.extend([name.into(), "--".into()]);
        }
        Lxc => {
            let name = checked(spec, "container name", target)?;
            argv.push(tool("lxc-attach"));
            argv.extend(extra);
            argv.extend(["--name".into(), name.into(), "--".into()]);
        }
        Lxd | Incus => {
            // like community.general.lxd/incus: `exec [REMOTE:]NAME -- [su USER -c] sh -c`
            let name = checked(spec, "instance name", target)?;
            argv.push(tool(if spec.transport == Lxd {
                "lxc"
            } else {
                "incus"
            }));
            argv.extend(extra); // --project P
            argv.extend(["exec".into(), name.into(), "--".into()]);
            if let Some(u) = user.filter(|u| *u != "root") {
                let su = checked(spec, "su command", spec.su.as_deref().or(Some("/bin/su")))?;
                argv.extend([su.into(), u.into(), "-c".into()]);
            }
        }
        Kubectl => {
            let name = checked(spec, "pod name", target)?;
            argv.push(tool("kubectl"));
            argv.extend(extra); // -n, --kubeconfig, --context, ...
            argv.extend(["exec".into(), "-i".into(), name.into()]);
            if let Some(c) = &spec.container {
                let c = checked(spec, "container name", Some(c))?;
                argv.extend(["-c".into(), c.into()]);
            }
            argv.push("--".into());
            if user.is_some() {
                return Err(CommandError::BadSpec {
                    host: spec.label(),
                    reason: "kubectl runs as the container's user; become another user instead"
                        .into(),
                });
            }
        }
        Chroot => {
            let dir = checked(spec, "chroot directory", target)?;
            if !dir.starts_with('/') {
                return Err(CommandError::BadSpec {
                    host: spec.label(),
                    reason: format!("the chroot directory must be absolute, not {dir:?}"),
                });
            }
            argv.push(tool("chroot"));
            argv.extend(extra);
            if let Some(u) = user {
                argv.push(format!("--userspec={u}"));
            }
            argv.push(dir.into());
        }
        Setns => {
            let pid = checked(spec, "process id", target)?;
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CommandError::BadSpec {
                    host: spec.label(),
                    reason: format!(
                        "setns needs host = the pid whose namespaces to enter, not {pid:?}"
                    ),
                });
            }
            argv.push(tool("nsenter"));
            argv.extend(["--target".into(), pid.into()]);
            for ns in ["--mount", "--uts", "--ipc", "--net", "--pid"] {
                argv.push(ns.into());
            }
            argv.extend(extra);
            if let Some(u) = user {
                // nsenter takes ids: resolve the name in the target's own /etc/passwd
                return Err(CommandError::BadSpec {
                    host: spec.label(),
                    reason: format!("setns enters as the daemon's user; become {u} instead"),
                });
            }
            argv.push("--".into());
        }
        Jail => {
            let name = checked(spec, "jail name", target)?;
            argv.push(tool("jexec"));
            argv.extend(extra);
            if let Some(u) = user {
                if !u
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return Err(CommandError::BadSpec {
                        host: spec.label(),
                        reason: format!("invalid jail user name {u:?}"),
                    });
                }
                argv.extend(["-U".into(), u.into(), name.into()]);
                // like community.general.jail: `jexec -U` keeps the caller's HOME
                argv.extend(["/bin/sh".into(), "-c".into()]);
                argv.push(format!("HOME=~{u}; export HOME; {}", sh[2]));
                return Ok(argv);
            }
            argv.push(name.into());
        }
        Machinectl => {
            let name = checked(spec, "machine name", target)?;
            argv.push(tool("systemd-run"));
            argv.extend(extra);
            argv.extend([
                format!("--machine={name}"),
                "--pipe".into(),
                "--quiet".into(),
                "--wait".into(),
                "--collect".into(),
            ]);
            if let Some(u) = user {
                argv.push(format!("--uid={u}"));
            }
        }
        Ssh | Local | Unix => {
            return Err(CommandError::BadSpec {
                host: spec.label(),
                reason: "not an enter transport".into(),
            })
        }
    }
    argv.extend(sh);
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: TransportKind, host: &str, user: Option<&str>) -> Spec {
        Spec {
            transport: kind,
            host: Some(host.into()),
            user: user.map(Into::into),
            extra_args: Some("--x 'a b'".into()),
            ..Default::default()
        }
    }

    fn head(kind: TransportKind, host: &str, user: Option<&str>) -> Vec<String> {
        let mut a = argv(&spec(kind, host, user), "STAGE0".into()).unwrap();
        assert_eq!(a.split_off(a.len() - 3), ["/bin/sh", "-c", "STAGE0"]);
        a
    }

    #[test]
    fn argv_per_tool() {
        use TransportKind::*;
        let x = ["--x", "a b"];
        let cases: Vec<(TransportKind, &str, Option<&str>, Vec<&str>)> = vec![
            (
                Buildah,
                "c1",
                Some("app"),
                [&["buildah"][..], &x, &["run", "--user", "app", "c1", "--"]].concat(),
            ),
            (
                Lxc,
                "c1",
                None,
                [&["lxc-attach"][..], &x, &["--name", "c1", "--"]].concat(),
            ),
            (
                Lxd,
                "local:c1",
                Some("app"),
                [
                    &["lxc"][..],
                    &x,
                    &["exec", "local:c1", "--", "/bin/su", "app", "-c"],
                ]
                .concat(),
            ),
            (
                Lxd,
                "c1",
                Some("root"),
                [&["lxc"][..], &x, &["exec", "c1", "--"]].concat(),
            ),
            (
                Incus,
                "r:c1",
                None,
                [&["incus"][..], &x, &["exec", "r:c1", "--"]].concat(),
            ),
            (
                Kubectl,
                "pod-1",
                None,
                [&["kubectl"][..], &x, &["exec", "-i", "pod-1", "--"]].concat(),
            ),
            (
                Chroot,
                "/srv/root",
                Some("app"),
                [&["chroot"][..], &x, &["--userspec=app", "/srv/root"]].concat(),
            ),
            (
                Setns,
                "4242",
                None,
                [
                    &[
                        "nsenter", "--target", "4242", "--mount", "--uts", "--ipc", "--net",
                        "--pid",
                    ][..],
                    &x,
                    &["--"],
                ]
                .concat(),
            ),
            (Jail, "www", None, [&["jexec"][..], &x, &["www"]].concat()),
            (
                Machinectl,
                "m1",
                Some("app"),
                [
                    &["systemd-run"][..],
                    &x,
                    &[
                        "--machine=m1",
                        "--pipe",
                        "--quiet",
                        "--wait",
                        "--collect",
                        "--uid=app",
                    ],
                ]
                .concat(),
            ),
        ];
        for (kind, host, user, want) in cases {
            assert_eq!(head(kind, host, user), want, "{kind:?}");
        }
    }

    #[test]
    fn kubectl_container_incus_su_and_jail_home() {
        let k = Spec {
            container: Some("web".into()),
            extra_args: Some("-n ns1 --kubeconfig /k".into()),
            ..spec(TransportKind::Kubectl, "pod-1", None)
        };
        let a = argv(&k, "S0".into()).unwrap();
        assert_eq!(
            a,
            [
                "kubectl",
                "-n",
                "ns1",
                "--kubeconfig",
                "/k",
                "exec",
                "-i",
                "pod-1",
                "-c",
                "web",
                "--",
                "/bin/sh",
                "-c",
                "S0"
            ]
        );
        let i = Spec {
            su: Some("/usr/bin/su".into()),
            extra_args: Some("--project p1".into()),
            ..spec(TransportKind::Incus, "local:c1", Some("app"))
        };
        assert_eq!(
            argv(&i, "S0".into()).unwrap(),
            [
                "incus",
                "--project",
                "p1",
                "exec",
                "local:c1",
                "--",
                "/usr/bin/su",
                "app",
                "-c",
                "/bin/sh",
                "-c",
                "S0"
            ]
        );
        let j = Spec {
            extra_args: None,
            ..spec(TransportKind::Jail, "www", Some("app"))
        };
        assert_eq!(
            argv(&j, "S0".into()).unwrap(),
            [
                "jexec",
                "-U",
                "app",
                "www",
                "/bin/sh",
                "-c",
                "HOME=~app; export HOME; S0"
            ]
        );
    }

    #[test]
    fn hostile_targets_are_refused() {
        use TransportKind::*;
        for (kind, host, user) in [
            (Chroot, "relative/dir", None),
            (Chroot, "/a b", None),
            (Setns, "12x", None),
            (Setns, "42", Some("root")),
            (Kubectl, "--all", None),
            (Lxd, "c1", Some("-x")),
            (Jail, "", None),
            (Jail, "www", Some("a;b")),
            (Kubectl, "pod", Some("app")),
        ] {
            assert!(
                argv(&spec(kind, host, user), "S".into()).is_err(),
                "{kind:?} {host:?}"
            );
        }
        let bad_container = Spec {
            container: Some("-x".into()),
            ..spec(TransportKind::Kubectl, "pod", None)
        };
        assert!(argv(&bad_container, "S".into()).is_err());
        let misplaced = Spec {
            container: Some("web".into()),
            ..spec(TransportKind::Lxd, "c1", None)
        };
        assert!(argv(&misplaced, "S".into()).is_err());
    }
}
