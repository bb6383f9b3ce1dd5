//! Building the argv that starts a target's agent.

use super::{bootstrap, Spec, TransportKind};
use crate::api::ErrorKind;

/// Why a spec cannot be turned into a command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A field is missing or unsafe.
    #[error("bad connection spec for {host}: {reason}")]
    BadSpec {
        /// Target label.
        host: String,
        /// What is wrong.
        reason: String,
    },
    /// The ssh host name cannot be a host (empty, an option, white space): as unreachable as
    /// a name that does not resolve (stock ssh fails the same host as UNREACHABLE).
    #[error("bad connection spec for {host}: invalid host name {name:?}")]
    BadHost {
        /// Target label.
        host: String,
        /// The host name given.
        name: String,
    },
    /// A password was given, and only the daemon (with its askpass helper) can start this.
    #[error(
        "bad connection spec for {host}: a password was given but no askpass helper is available"
    )]
    NeedsAskpass {
        /// Target label.
        host: String,
    },
}

impl CommandError {
    /// The API error kind for this spec problem (docs/api.md).
    pub fn kind(&self) -> ErrorKind {
        match self {
            CommandError::BadHost { .. } => ErrorKind::Unreachable,
            CommandError::BadSpec { .. } | CommandError::NeedsAskpass { .. } => {
                ErrorKind::BadRequest
            }
        }
    }
}

pub(super) fn words(
    spec: &Spec,
    field: &str,
    v: &Option<String>,
) -> Result<Vec<String>, CommandError> {
    match v {
        None => Ok(Vec::new()),
        Some(s) => shlex::split(s).ok_or_else(|| CommandError::BadSpec {
            host: spec.label(),
            reason: format!("{field} is not valid shell words (unbalanced quotes?): {s:?}"),
        }),
    }
}

/// The configured interpreter as (first word, all words), each shell-quoted.
fn python_words(spec: &Spec) -> Result<Option<(String, String)>, CommandError> {
    match &spec.python {
        None => Ok(None),
        Some(p) => {
            let w = words(spec, "python", &Some(p.clone()))?;
            if w.is_empty() {
                return Ok(None);
            }
            let err = |e: shlex::QuoteError| CommandError::BadSpec {
                host: spec.label(),
                reason: format!("python interpreter {p:?}: {e}"),
            };
            let joined = shlex::try_join(w.iter().map(|s| s.as_str())).map_err(err)?;
            let first = shlex::try_quote(&w[0]).map_err(err)?.into_owned();
            Ok(Some((first, joined)))
        }
    }
}

/// What to execute to start an agent.
#[derive(Debug, Default)]
pub struct Launch {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Environment additions for that process only.
    pub env: Vec<(String, String)>,
    /// The ssh password the askpass helper must hand out, once. Never in `env`: the caller
    /// writes it to a private file and names the file in `SPINDLE_ASKPASS_FILE` (see
    /// `docs/security.md`).
    pub askpass_secret: Option<String>,
}

/// The argv (program first) and extra environment that start the agent for `spec`.
pub fn command(spec: &Spec, askpass: Option<&std::path::Path>) -> Result<Launch, CommandError> {
    let mut launch = launch(spec, askpass, stage0_of(spec)?)?;
    launch.env.extend(spec_env(spec)?);
    Ok(launch)
}

fn stage0_of(spec: &Spec) -> Result<String, CommandError> {
    let py = python_words(spec)?;
    Ok(bootstrap::stage0(
        py.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
    ))
}

/// `spec.env`, checked: names are non-empty, without `=` or NUL; values without NUL.
fn spec_env(spec: &Spec) -> Result<Vec<(String, String)>, CommandError> {
    let Some(env) = &spec.env else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(env.len());
    for (k, v) in env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(CommandError::BadSpec {
                host: spec.label(),
                reason: format!("invalid environment variable {k:?}"),
            });
        }
        out.push((k.clone(), v.clone()));
    }
    Ok(out)
}

fn launch(
    spec: &Spec,
    askpass: Option<&std::path::Path>,
    stage0: String,
) -> Result<Launch, CommandError> {
    match spec.transport {
        TransportKind::Unix => match &spec.host {
            Some(h) if !h.is_empty() => Ok(Launch::default()),
            _ => Err(CommandError::BadSpec {
                host: spec.label(),
                reason: "unix transport needs host = socket path".into(),
            }),
        },
        TransportKind::Local => Ok(Launch {
            argv: vec!["/bin/sh".into(), "-c".into(), stage0],
            ..Launch::default()
        }),
        TransportKind::Docker
        | TransportKind::Podman
        | TransportKind::Buildah
        | TransportKind::Lxc
        | TransportKind::Lxd
        | TransportKind::Incus
        | TransportKind::Kubectl
        | TransportKind::Chroot
        | TransportKind::Setns
        | TransportKind::Jail
        | TransportKind::Machinectl => Ok(Launch {
            argv: super::enter::argv(spec, stage0)?,
            ..Launch::default()
        }),
        TransportKind::Ssh => {
            let bad = |reason: &str| CommandError::BadSpec {
                host: spec.label(),
                reason: reason.into(),
            };
            let host = spec
                .host
                .as_deref()
                .ok_or_else(|| bad("ssh needs a host"))?;
            if host.is_empty() || host.starts_with('-') || host.chars().any(char::is_whitespace) {
                return Err(CommandError::BadHost {
                    host: spec.label(),
                    name: host.into(),
                });
            }
            let mut argv: Vec<String> =
                vec![spec.ssh_executable.clone().unwrap_or_else(|| "ssh".into())];
            let mut env = Vec::new();
            let mut secret = None;
            let o = |argv: &mut Vec<String>, v: String| {
                argv.push("-o".into());
                argv.push(v);
            };
            match (&spec.password, askpass) {
                (Some(pw), Some(helper)) => {
                    // ssh reads the password from our askpass helper (this binary with
                    // SPINDLE_ASKPASS_MODE), which reads it once from a private file the
                    // caller makes (the password is never in ssh's environment).
                    o(&mut argv, "BatchMode=no".into());
                    o(&mut argv, "NumberOfPasswordPrompts=1".into());
                    o(
                        &mut argv,
                        "PreferredAuthentications=password,keyboard-interactive".into(),
                    );
                    env.push(("SSH_ASKPASS".into(), helper.display().to_string()));
                    env.push(("SSH_ASKPASS_REQUIRE".into(), "force".into()));
                    env.push(("DISPLAY".into(), ":spindle".into()));
                    secret = Some(pw.clone());
                }
                (Some(_), None) => return Err(CommandError::NeedsAskpass { host: spec.label() }),
                (None, _) => o(&mut argv, "BatchMode=yes".into()),
            }
            o(
                &mut argv,
                format!("ConnectTimeout={}", spec.connect_timeout_secs()),
            );
            o(&mut argv, "ServerAliveInterval=15".into());
            o(&mut argv, "ServerAliveCountMax=3".into());
            if let Some(p) = spec.port {
                argv.push("-p".into());
                argv.push(p.to_string());
            }
            if let Some(u) = &spec.user {
                if u.starts_with('-') {
                    return Err(bad(&format!("invalid user name {u:?}")));
                }
                argv.push("-l".into());
                argv.push(u.clone());
            }
            if let Some(k) = &spec.identity_file {
                argv.push("-i".into());
                argv.push(k.clone());
            }
            argv.extend(words(spec, "ssh_args", &spec.ssh_args)?);
            argv.extend(words(spec, "ssh_common_args", &spec.ssh_common_args)?);
            argv.extend(words(spec, "ssh_extra_args", &spec.ssh_extra_args)?);
            // No terminal, whatever the user's args ask (`-tt` for a sudo requiretty, which
            // spindle's become does on a pty of its own): a terminal would rewrite the frame
            // bytes (CR/LF, control characters). ssh takes the last of -t/-T.
            argv.push("-T".into());
            argv.push("--".into());
            argv.push(host.into());
            // sshd runs the remote command with the user's login shell, which may not be
            // POSIX (fish, csh): it gets one simple command that runs stage 0 with /bin/sh.
            argv.push(bootstrap::login_shell_word(&stage0));
            Ok(Launch {
                argv,
                env,
                askpass_secret: secret,
            })
        }
    }
}

/// The shell command line a hop's agent runs to start the agent of `spec` behind it (see
/// `spawn_context` in docs/protocol.md): the same argv as a direct start, with the remote
/// command `echo MARKER; __SPINDLE_BOOT__` (the hop's agent puts its own stage 1 in place of
/// the placeholder), every word shell-quoted. With a password, ssh asks for it on the hop
/// agent's pty, which types it (no askpass helper on a hop).
pub fn hop_command(spec: &Spec, marker: &str) -> Result<String, CommandError> {
    let bad = |reason: String| CommandError::BadSpec {
        host: spec.label(),
        reason,
    };
    if spec.transport == TransportKind::Unix {
        return Err(bad(
            "the unix transport cannot be reached through a hop".into()
        ));
    }
    if marker.is_empty()
        || !marker
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(bad(format!("bad marker {marker:?}")));
    }
    let direct = Spec {
        password: None,
        escalate: None,
        interpreter: None,
        via: None,
        ..spec.clone()
    };
    let stage0 = stage0_of(&direct)?;
    let mut argv = launch(&direct, None, stage0.clone())?.argv;
    let env = spec_env(spec)?;
    if !env.is_empty() {
        let words = env.into_iter().map(|(k, v)| format!("{k}={v}"));
        argv.splice(0..0, std::iter::once("env".to_string()).chain(words));
    }
    if spec.password.is_some() && spec.transport == TransportKind::Ssh {
        if let Some(i) = argv.iter().position(|a| a == "BatchMode=yes") {
            argv[i] = "BatchMode=no".into();
            let extra = [
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "PreferredAuthentications=password,keyboard-interactive",
            ];
            argv.splice(i + 1..i + 1, extra.iter().map(|s| s.to_string()));
        }
    }
    // stage 0: the hop's agent starts the interpreter itself (what a transport puts before
    // stage 0 in that word, like jail's HOME, stays; ssh's goes through the login shell)
    let last = argv.pop().unwrap_or_default();
    let boot = format!("echo {marker}; {}", super::BOOT_PLACEHOLDER);
    argv.push(if spec.transport == TransportKind::Ssh {
        bootstrap::login_shell_word(&boot)
    } else {
        let before = last.strip_suffix(stage0.as_str()).unwrap_or_default();
        format!("{before}{boot}")
    });
    // Every word single-quoted where it needs quotes: the agent puts its boot command (no
    // single quote in it, double quotes and all) in place of the placeholder, so that must
    // sit inside single quotes here.
    let words: Vec<String> = argv.iter().map(|w| sh_single_quote(w)).collect();
    Ok(words.join(" "))
}

/// `word` for a POSIX shell: as it is when plain, else in single quotes (`'` as `'\''`).
fn sh_single_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_args_are_parsed_not_pasted() {
        let spec = Spec {
            host: Some("web1".into()),
            port: Some(2222),
            user: Some("deploy".into()),
            ssh_common_args: Some("-o 'ProxyCommand=nc %h %p' -o StrictHostKeyChecking=no".into()),
            ..Default::default()
        };
        let Launch { argv, env, .. } = command(&spec, None).unwrap();
        assert!(env.is_empty());
        assert!(argv.contains(&"ProxyCommand=nc %h %p".to_string()));
        assert!(argv.contains(&"BatchMode=yes".to_string()));
        let host_at = argv.iter().position(|a| a == "web1").unwrap();
        assert_eq!(argv[host_at - 1], "--");
        assert_eq!(argv.len(), host_at + 2);
        // a terminal asked for in the user's args is overridden (ssh takes the last -t/-T)
        let tty = Spec {
            ssh_extra_args: Some("-tt".into()),
            ..spec.clone()
        };
        let argv = command(&tty, None).unwrap().argv;
        let at = |w: &str| argv.iter().rposition(|a| a == w).unwrap();
        assert!(
            at("-T") > at("-tt") && at("-T") + 2 == at("web1"),
            "{argv:?}"
        );
    }

    #[test]
    fn the_password_is_never_in_the_environment() {
        let spec = Spec {
            host: Some("web1".into()),
            password: Some("s3cret".into()),
            ..Default::default()
        };
        let l = command(&spec, Some(std::path::Path::new("/usr/bin/spindle"))).unwrap();
        assert_eq!(l.askpass_secret.as_deref(), Some("s3cret"));
        assert!(!l
            .env
            .iter()
            .any(|(k, v)| k.contains("PASSWORD") || v.contains("s3cret")));
        assert!(!l.argv.iter().any(|a| a.contains("s3cret")));
    }

    #[test]
    fn hostile_fields_are_refused() {
        for spec in [
            Spec {
                host: Some("-oProxyCommand=x".into()),
                ..Default::default()
            },
            Spec {
                host: Some("a b".into()),
                ..Default::default()
            },
            Spec {
                host: Some("h".into()),
                ssh_args: Some("'unbalanced".into()),
                ..Default::default()
            },
            Spec {
                host: None,
                ..Default::default()
            },
            Spec {
                transport: TransportKind::Docker,
                host: Some("--privileged".into()),
                ..Default::default()
            },
            Spec {
                transport: TransportKind::Podman,
                host: Some("c1".into()),
                user: Some("-u0".into()),
                ..Default::default()
            },
            Spec {
                transport: TransportKind::Docker,
                host: None,
                ..Default::default()
            },
        ] {
            assert!(command(&spec, None).is_err(), "{spec:?}");
        }
    }

    #[test]
    fn container_exec_argv() {
        let spec = Spec {
            transport: TransportKind::Docker,
            host: Some("web-1".into()),
            user: Some("app".into()),
            extra_args: Some("--context 'prod east'".into()),
            ..Default::default()
        };
        let argv = command(&spec, None).unwrap().argv;
        assert_eq!(
            argv[..9],
            [
                "docker",
                "--context",
                "prod east",
                "exec",
                "-i",
                "-u",
                "app",
                "web-1",
                "/bin/sh"
            ]
        );
        assert_eq!(argv[9], "-c");
        assert!(argv[10].contains("python3"), "{}", argv[10]);
        let spec = Spec {
            transport: TransportKind::Podman,
            host: Some("db".into()),
            executable: Some("/usr/local/bin/podman".into()),
            ..Default::default()
        };
        let argv = command(&spec, None).unwrap().argv;
        assert_eq!(
            argv[..5],
            ["/usr/local/bin/podman", "exec", "-i", "db", "/bin/sh"]
        );
    }

    #[test]
    fn hop_command_is_one_quoted_line() {
        let spec = Spec {
            host: Some("web1".into()),
            port: Some(2222),
            user: Some("deploy".into()),
            identity_file: Some("/keys/a key".into()),
            ssh_common_args: Some("-o 'ProxyCommand=nc %h %p'".into()),
            via: Some(Box::new(Spec {
                host: Some("bastion".into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        let line = hop_command(&spec, "SPINDLE-VIA-3").unwrap();
        let words = shlex::split(&line).unwrap();
        assert_eq!(words[0], "ssh");
        assert!(words.contains(&"BatchMode=yes".to_string()));
        assert!(words.contains(&"/keys/a key".to_string()));
        assert!(words.contains(&"ProxyCommand=nc %h %p".to_string()));
        assert_eq!(words[words.len() - 2], "web1");
        // through the target's login shell, whatever it is (fish, csh: not POSIX)
        assert_eq!(
            words[words.len() - 1],
            "exec /bin/sh -c 'echo SPINDLE-VIA-3; __SPINDLE_BOOT__'"
        );
        // The hop's agent puts its boot command (double quotes, no single quote) in place of
        // the placeholder: it must stay one word, unchanged.
        let boot =
            r#"if [ -x /usr/bin/python3 ]; then exec /usr/bin/python3 -c "import os;n=3"; fi"#;
        let filled = shlex::split(&line.replace(crate::transport::BOOT_PLACEHOLDER, boot)).unwrap();
        assert_eq!(filled[..words.len() - 1], words[..words.len() - 1]);
        assert_eq!(
            filled[words.len() - 1],
            format!("exec /bin/sh -c 'echo SPINDLE-VIA-3; {boot}'")
        );
        let pw = Spec {
            password: Some("s3cret".into()),
            ..spec.clone()
        };
        let words = shlex::split(&hop_command(&pw, "M").unwrap()).unwrap();
        assert!(words.contains(&"BatchMode=no".to_string()));
        assert!(!words.iter().any(|w| w.contains("s3cret")));
        let unix = Spec {
            transport: TransportKind::Unix,
            host: Some("/s".into()),
            ..Default::default()
        };
        assert!(hop_command(&unix, "M").is_err());
        assert!(hop_command(&spec, "a b").is_err());
    }

    #[test]
    fn env_and_enter_prefixes_reach_hops_and_launches() {
        let mut env = std::collections::BTreeMap::new();
        env.insert("KUBECONFIG".to_string(), "/k c".to_string());
        let jail = Spec {
            transport: TransportKind::Jail,
            host: Some("www".into()),
            user: Some("app".into()),
            env: Some(env.clone()),
            ..Default::default()
        };
        let l = command(&jail, None).unwrap();
        assert_eq!(l.env, [("KUBECONFIG".to_string(), "/k c".to_string())]);
        let words = shlex::split(&hop_command(&jail, "M").unwrap()).unwrap();
        assert_eq!(
            words,
            [
                "env",
                "KUBECONFIG=/k c",
                "jexec",
                "-U",
                "app",
                "www",
                "/bin/sh",
                "-c",
                "HOME=~app; export HOME; echo M; __SPINDLE_BOOT__"
            ]
        );
        env.insert("A=B".to_string(), "x".to_string());
        let bad = Spec {
            env: Some(env),
            ..jail
        };
        assert!(command(&bad, None).is_err());
    }

    #[test]
    fn python_is_quoted() {
        let spec = Spec {
            transport: TransportKind::Local,
            python: Some("/usr/bin/env python3".into()),
            ..Default::default()
        };
        let argv = command(&spec, None).unwrap().argv;
        assert!(
            argv[2].contains("exec /usr/bin/env python3 -c '"),
            "{}",
            argv[2]
        );
        assert!(argv[2].starts_with("if command -v /usr/bin/env "));
    }
}
