//! Host lists for the CLI: an Ansible INI inventory file (hosts, `[group]`, `[group:vars]`,
//! `[all:vars]`, the `ansible_*` connection variables) or a comma-separated list of hosts.

use crate::transport::{Spec, TransportKind};
use std::collections::HashMap;

/// Why an inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("cannot read inventory {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is malformed.
    #[error("{path}:{line}: {reason}")]
    Syntax {
        /// Path.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A host's variable has a value spindle cannot use.
    #[error("{path}: host {host}: {var}={value:?}: {reason}")]
    BadVar {
        /// Path (or `-i` list).
        path: String,
        /// Inventory name of the host.
        host: String,
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        reason: &'static str,
    },
}

/// Reads `-i`: a comma-separated list when it contains a comma or names no file, else a file.
pub fn load(arg: &str) -> Result<Vec<Spec>, InventoryError> {
    if arg.contains(',') || !std::path::Path::new(arg).exists() {
        return arg
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| apply(h, &HashMap::new(), arg))
            .collect::<Result<_, _>>();
    }
    let text = std::fs::read_to_string(arg).map_err(|source| InventoryError::Read {
        path: arg.into(),
        source,
    })?;
    parse(&text, arg)
}

/// Parses INI inventory text.
pub fn parse(text: &str, path: &str) -> Result<Vec<Spec>, InventoryError> {
    let mut hosts: Vec<(String, Vec<String>, HashMap<String, String>)> = Vec::new();
    let mut group_vars: HashMap<String, HashMap<String, String>> = HashMap::new();
    enum Section {
        Hosts(String),
        Vars(String),
        Other,
    }
    let mut section = Section::Hosts("ungrouped".into());
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let syntax = |reason: String| InventoryError::Syntax {
            path: path.into(),
            line: i + 1,
            reason,
        };
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = match name.split_once(':') {
                None => Section::Hosts(name.into()),
                Some((g, "vars")) => Section::Vars(g.into()),
                Some(_) => Section::Other,
            };
            continue;
        }
        let words = shlex::split(line).ok_or_else(|| syntax("unbalanced quotes".into()))?;
        match &section {
            Section::Hosts(g) => {
                let mut vars = HashMap::new();
                for w in &words[1..] {
                    let (k, v) = w
                        .split_once('=')
                        .ok_or_else(|| syntax(format!("expected key=value, got {w:?}")))?;
                    vars.insert(k.to_string(), v.to_string());
                }
                if let Some(h) = hosts.iter_mut().find(|h| h.0 == words[0]) {
                    h.1.push(g.clone());
                    h.2.extend(vars);
                } else {
                    hosts.push((words[0].clone(), vec![g.clone()], vars));
                }
            }
            Section::Vars(g) => {
                let (k, v) = line
                    .split_once('=')
                    .ok_or_else(|| syntax("expected key=value".into()))?;
                let v = v.trim();
                let v = shlex::split(v)
                    .and_then(|w| {
                        if w.len() == 1 {
                            w.into_iter().next()
                        } else {
                            None
                        }
                    })
                    .unwrap_or_else(|| v.to_string());
                group_vars
                    .entry(g.clone())
                    .or_default()
                    .insert(k.trim().into(), v);
            }
            Section::Other => {}
        }
    }
    let resolved: Vec<(Spec, Option<String>)> = hosts
        .into_iter()
        .map(|(name, groups, vars)| -> Result<_, InventoryError> {
            let mut all: HashMap<String, String> =
                group_vars.get("all").cloned().unwrap_or_default();
            for g in &groups {
                all.extend(group_vars.get(g).cloned().unwrap_or_default());
            }
            all.extend(vars);
            let via = all.get("spindle_via").cloned().filter(|v| v != &name);
            Ok((apply(&name, &all, path)?, via))
        })
        .collect::<Result<_, _>>()?;
    // spindle_via: the hop is another host of the inventory, with its own hop, recursively.
    let by_name: HashMap<String, usize> = resolved
        .iter()
        .enumerate()
        .filter_map(|(i, (s, _))| s.name.clone().map(|n| (n, i)))
        .collect();
    let with_via = |i: usize| -> Result<Spec, InventoryError> {
        let mut chain = vec![i];
        let mut at = i;
        while let Some(hop) = &resolved[at].1 {
            let bad = |reason: String| InventoryError::Syntax {
                path: path.into(),
                line: 0,
                reason,
            };
            let &j = by_name
                .get(hop)
                .ok_or_else(|| bad(format!("spindle_via={hop} is not a host of the inventory")))?;
            if chain.contains(&j) || chain.len() > crate::transport::MAX_VIA_DEPTH {
                return Err(bad(format!("spindle_via loop or chain too long at {hop}")));
            }
            chain.push(j);
            at = j;
        }
        let mut spec: Option<Spec> = None;
        for &k in chain.iter().rev() {
            let mut s = resolved[k].0.clone();
            s.via = spec.map(Box::new);
            spec = Some(s);
        }
        Ok(spec.unwrap_or_default())
    };
    (0..resolved.len()).map(with_via).collect()
}

/// A host's spec from its variables; a connection spindle cannot run, or a port or timeout
/// that is not a number in range, is an error naming the host (never a silent default).
fn apply(name: &str, vars: &HashMap<String, String>, path: &str) -> Result<Spec, InventoryError> {
    let get = |k: &str| vars.get(k).cloned();
    let bad = |var: &'static str, value: &str, reason: &'static str| InventoryError::BadVar {
        path: path.into(),
        host: name.into(),
        var,
        value: value.into(),
        reason,
    };
    let transport = match get("ansible_connection").as_deref() {
        None | Some("ssh" | "smart" | "ansible.builtin.ssh" | "ansible.legacy.ssh") => {
            TransportKind::Ssh
        }
        Some("local" | "ansible.builtin.local" | "ansible.legacy.local") => TransportKind::Local,
        Some("docker" | "community.docker.docker") => TransportKind::Docker,
        Some("podman" | "containers.podman.podman") => TransportKind::Podman,
        Some(other) => {
            return Err(bad(
                "ansible_connection",
                other,
                "not one the spindle CLI runs (ssh, smart, local, docker, podman)",
            ))
        }
    };
    let port = match get("ansible_port").or_else(|| get("ansible_ssh_port")) {
        None => None,
        Some(p) => match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(bad("ansible_port", &p, "must be a port number 1..65535")),
        },
    };
    let timeout_var = if vars.contains_key("ansible_ssh_timeout") {
        "ansible_ssh_timeout"
    } else {
        "ansible_timeout"
    };
    let connect_timeout = match get(timeout_var) {
        None => None,
        Some(t) => match t.trim().parse::<u64>() {
            Ok(n) if (1..=crate::api::validate::MAX_CONNECT_TIMEOUT_SECS).contains(&n) => Some(n),
            _ => return Err(bad(timeout_var, &t, "must be whole seconds, 1 to one week")),
        },
    };
    Ok(Spec {
        transport,
        host: Some(get("ansible_host").unwrap_or_else(|| name.to_string())),
        port,
        user: get("ansible_user"),
        identity_file: get("ansible_ssh_private_key_file")
            .or_else(|| get("ansible_private_key_file")),
        ssh_executable: get("ansible_ssh_executable"),
        ssh_args: get("ansible_ssh_args"),
        ssh_common_args: get("ansible_ssh_common_args"),
        ssh_extra_args: get("ansible_ssh_extra_args"),
        password: get("ansible_password").or_else(|| get("ansible_ssh_pass")),
        python: get("ansible_python_interpreter"),
        connect_timeout,
        executable: get("ansible_podman_executable"),
        extra_args: get("ansible_docker_extra_args").or_else(|| get("ansible_podman_extra_args")),
        container: None,
        su: None,
        env: None,
        name: Some(name.to_string()),
        escalate: None,
        interpreter: None,
        via: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spindle_via_chains() {
        let inv = "[dc1]\nweb1\n[dc1:vars]\nspindle_via=bastion\n[bastions]\nbastion spindle_via=gw\ngw\n";
        let s = parse(inv, "inv").unwrap();
        let web = &s[0];
        let hop = web.via.as_deref().unwrap();
        assert_eq!(hop.name.as_deref(), Some("bastion"));
        assert_eq!(hop.via.as_deref().unwrap().name.as_deref(), Some("gw"));
        assert!(hop.via.as_deref().unwrap().via.is_none());
        assert_eq!(web.label(), "web1 via bastion");
        assert!(parse("a spindle_via=b\nb spindle_via=a\n", "inv").is_err());
        assert!(parse("a spindle_via=nowhere\n", "inv").is_err());
    }

    #[test]
    fn ini_groups_and_vars() {
        let inv = "[web]\nw1 ansible_host=10.0.0.2 ansible_port=2222\nw2\n[web:vars]\nansible_user=deploy\nansible_ssh_common_args='-o A=b -o C=d'\n[all:vars]\nansible_user=root\nansible_python_interpreter=/usr/bin/python3\n[local]\nl1 ansible_connection=local\n";
        let s = parse(inv, "inv").unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].host.as_deref(), Some("10.0.0.2"));
        assert_eq!(s[0].port, Some(2222));
        assert_eq!(s[0].user.as_deref(), Some("deploy"));
        assert_eq!(s[0].ssh_common_args.as_deref(), Some("-o A=b -o C=d"));
        assert_eq!(s[1].name.as_deref(), Some("w2"));
        assert_eq!(s[2].transport, TransportKind::Local);
        assert_eq!(s[2].user.as_deref(), Some("root"));
        assert_eq!(s[2].python.as_deref(), Some("/usr/bin/python3"));
    }

    #[test]
    fn values_spindle_cannot_use_are_errors_naming_the_host() {
        for (line, var) in [
            ("w1 ansible_port='2201 x'", "ansible_port=\"2201 x\""),
            ("w1 ansible_port=0", "ansible_port=\"0\""),
            (
                "w1 ansible_connection=winrm",
                "ansible_connection=\"winrm\"",
            ),
            ("w1 ansible_timeout=soon", "ansible_timeout=\"soon\""),
            ("w1 ansible_ssh_timeout=0", "ansible_ssh_timeout=\"0\""),
        ] {
            let e = parse(line, "inv").expect_err(line).to_string();
            assert!(e.starts_with("inv: host w1: ") && e.contains(var), "{e}");
        }
        let s = parse(
            "w1 ansible_connection=smart ansible_port=2201 ansible_timeout=30
",
            "inv",
        )
        .expect("valid");
        assert_eq!(
            (s[0].transport, s[0].port, s[0].connect_timeout),
            (TransportKind::Ssh, Some(2201), Some(30))
        );
    }

    #[test]
    fn comma_list() {
        let s = load("a,b,").unwrap();
        assert_eq!(s.len(), 2);
    }
}
