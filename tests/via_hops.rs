//! Connection delegation (`via`): a target reached through one or more hops whose agents start
//! its transport command and relay its frames. A local chain (no fleet needed), then a real
//! namespace fleet arranged as controller → gateway → 2 bastions → 20 web hosts, where every
//! hop runs ssh from its own namespace to the next.

mod common;
use common::*;
use serde_json::{json, Value};
use spindle::client::{Client, ClientError};
use std::collections::HashMap;
use std::process::Command;

fn via(spec: &Value, hop: &Value) -> Value {
    let mut s = spec.clone();
    s["via"] = hop.clone();
    s
}

fn ping(c: &mut Client, t: &Value) -> Value {
    c.call(json!({"op": "ping", "target": t}))
        .unwrap_or_else(|e| panic!("ping {t}: {e}"))
}

fn sh(c: &mut Client, t: &Value, cmd: &str) -> String {
    let v = c
        .call(json!({"op": "exec", "target": t, "shell": cmd}))
        .unwrap_or_else(|e| panic!("exec on {t}: {e}"));
    assert_eq!(v["rc"], 0, "{cmd}: {v}");
    b64(&v, "stdout_b64")
}

/// Sends one request per target at once; the results in target order.
fn all(c: &mut Client, reqs: Vec<Value>) -> Vec<Result<Value, ClientError>> {
    let ids: Vec<u64> = reqs.into_iter().map(|r| c.send(r).expect("send")).collect();
    let mut got: HashMap<u64, Result<Value, ClientError>> = HashMap::new();
    for _ in &ids {
        let r = c.recv().expect("recv");
        got.insert(r.id, r.result);
    }
    ids.iter().map(|i| got.remove(i).expect("reply")).collect()
}

#[test]
fn local_chain_three_deep() {
    let dir = scratch("via_local_chain");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let specs = local_specs(3);
    let hop0 = target(&specs[0]);
    let hop1 = via(&target(&specs[1]), &hop0);
    let leaf = via(&target(&specs[2]), &hop1);
    // The leaf first: its hops are opened on the way.
    let p2 = ping(&mut c, &leaf)["pid"].as_u64().expect("pid");
    let p1 = ping(&mut c, &hop1)["pid"].as_u64().expect("pid");
    let p0 = ping(&mut c, &hop0)["pid"].as_u64().expect("pid");
    assert!(p0 != p1 && p1 != p2 && p0 != p2);
    // Each agent was started by the one before it.
    let ppid = |p: u64| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
        after
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0)
    };
    let ancestors = |mut p: u64| {
        let mut v = Vec::new();
        while p > 1 {
            p = ppid(p);
            v.push(p);
        }
        v
    };
    assert!(ancestors(p2).contains(&p1), "leaf not under hop1");
    assert!(ancestors(p1).contains(&p0), "hop1 not under hop0");
    assert_eq!(sh(&mut c, &leaf, "echo $((6*7))"), "42\n");
    // Files through two hop caches (large) and plain (small), then one replaced in place.
    let files = shared_dir("via_local_chain");
    for (i, size) in [(0, 100), (1, 300 * 1024), (2, 300 * 1024)] {
        let src = files.join(format!("src{i}"));
        let data: Vec<u8> = (0..size).map(|k| (k * 13 % 256) as u8 ^ i as u8).collect();
        std::fs::write(&src, &data).expect("write");
        let dest = files.join(format!("dest{i}"));
        for t in [&leaf, &hop1] {
            let r = c
                .call(json!({"op": "put", "target": t, "src": src, "dest": dest, "mode": 0o600}))
                .expect("put");
            assert_eq!(r["size"], size);
            assert_eq!(std::fs::read(&dest).expect("dest"), data);
        }
    }
    let stats = c.call(json!({"op": "stats"})).expect("stats");
    assert!(
        stats["targets"].get("local2 via local1").is_some(),
        "{stats}"
    );
    assert_eq!(stats["streams"], 3, "{stats}");

    // Closing a hop that carries other targets (Ansible's reset_connection on a bastion)
    // leaves it and them running.
    c.call(json!({"op": "close", "target": hop1}))
        .expect("close");
    assert_eq!(ping(&mut c, &hop1)["pid"].as_u64(), Some(p1));
    assert_eq!(ping(&mut c, &leaf)["pid"].as_u64(), Some(p2));

    // A hop that fails takes what is behind it along, and nothing else. Its own call: its
    // agent was killed (`agent_ended`); behind it, the way in is lost (`connection_lost`).
    let gone = c.call(json!({"op": "exec", "target": hop1, "shell": "kill -9 $PPID; sleep 5"}));
    assert!(matches!(gone, Err(ClientError::Api { ref kind, .. }) if kind == "agent_ended"));
    match c.call(json!({"op": "exec", "target": leaf, "argv": ["true"]})) {
        // Either it learnt the hop was gone before the call, or the call was in flight.
        Ok(_) => {}
        Err(ClientError::Api { kind, .. }) => assert_eq!(kind, "connection_lost"),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(ping(&mut c, &hop0)["pid"].as_u64(), Some(p0));
    let p2b = ping(&mut c, &leaf)["pid"].as_u64().expect("pid");
    assert_ne!(p2b, p2, "a new chain was opened");
    assert_eq!(sh(&mut c, &leaf, "echo ok"), "ok\n");

    // A hop command that fails says why (the hop ran it), and costs the hop nothing.
    let mut bad = target(&specs[2]);
    bad["transport"] = json!("ssh");
    bad["host"] = json!("127.0.0.1");
    bad["port"] = json!(1);
    bad["name"] = json!("nowhere");
    match c.call(json!({"op": "ping", "target": via(&bad, &hop0)})) {
        Err(ClientError::Api {
            kind,
            message,
            host,
        }) => {
            assert_eq!(kind, "unreachable", "{message}");
            assert_eq!(host, "nowhere via local0");
            assert!(message.contains("via local0"), "{message}");
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
    let mut unix = target(&specs[2]);
    unix["transport"] = json!("unix");
    match c.call(json!({"op": "ping", "target": via(&unix, &hop0)})) {
        Err(ClientError::Api { kind, .. }) => assert_eq!(kind, "bad_request"),
        other => panic!("expected bad_request, got {other:?}"),
    }
    assert_eq!(ping(&mut c, &hop0)["pid"].as_u64(), Some(p0));

    // A become context on a target behind a hop.
    if can_sudo() {
        let mut nobody = leaf.clone();
        nobody["become"] = json!({
            "method": "sudo", "user": "nobody", "flags": "-H -S -n",
            "cmd": "sudo -H -S -n -u nobody /bin/sh -c 'echo SPINDLE-MARK-1 ; __SPINDLE_BOOT__'",
            "success": "SPINDLE-MARK-1",
        });
        assert_eq!(sh(&mut c, &nobody, "id -un"), "nobody\n");
        assert_eq!(sh(&mut c, &leaf, "id -un"), "root\n");
    }
}

#[test]
fn recycling_become_contexts_spares_targets_behind_a_hop() {
    // With room for one become context per target, become contexts on a hop are recycled
    // as usual, while the targets behind that hop (its other children) are neither counted
    // nor closed.
    if !can_sudo() {
        println!("SKIP: needs root and /usr/bin/sudo (scripts/setup.sh installs sudo)");
        return;
    }
    let dir = scratch("via_recycling");
    let daemon = Daemon::start_with(&dir, &["--max-interpreters", "1"]);
    let mut c = daemon.client();
    let specs = local_specs(4);
    let hop = target(&specs[0]);
    let behind: Vec<Value> = (1..4).map(|i| via(&target(&specs[i]), &hop)).collect();
    let pids: Vec<u64> = behind
        .iter()
        .map(|t| ping(&mut c, t)["pid"].as_u64().expect("pid"))
        .collect();
    for user in ["nobody", "daemon", "bin"] {
        let mut b = hop.clone();
        b["become"] = json!({
            "method": "sudo", "user": user, "flags": "-H -S -n",
            "cmd": format!("sudo -H -S -n -u {user} /bin/sh -c 'echo SPINDLE-MARK-1 ; __SPINDLE_BOOT__'"),
            "success": "SPINDLE-MARK-1",
        });
        assert_eq!(sh(&mut c, &b, "id -un"), format!("{user}\n"));
    }
    let stats = c.call(json!({"op": "stats"})).expect("stats");
    assert_eq!(stats["counters"]["recycled"], 2, "{stats}");
    for (t, p) in behind.iter().zip(&pids) {
        assert_eq!(
            ping(&mut c, t)["pid"].as_u64(),
            Some(*p),
            "a target behind the hop was closed"
        );
    }
}

/// Puts an incompressible blob of `size` bytes in the daemon's cache; its hash.
fn blob(c: &mut Client, size: usize, seed: u64) -> String {
    use base64::Engine as _;
    let data = noise(size, seed);
    let hash = spindle::cache::sha256_hex(&data);
    let b = base64::engine::general_purpose::STANDARD.encode(&data);
    c.call(json!({"op": "blob_put", "hash": hash, "data_b64": b}))
        .expect("blob_put");
    hash
}

/// Calls `blob_list` on every target at once, naming `hash` as needed; checks each has it.
fn blob_everywhere(c: &mut Client, targets: &[Value], hash: &str) {
    let lists = all(
        c,
        targets
            .iter()
            .map(|t| json!({"op": "call", "target": t, "payload": {"op": "blob_list"}, "blobs": [hash]}))
            .collect(),
    );
    for (k, r) in lists.into_iter().enumerate() {
        let v = r.unwrap_or_else(|e| panic!("blob_list on target {k}: {e}"));
        let has = v["hashes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|h| h == hash));
        assert!(has, "target {k}: {v}");
    }
}

/// Bytes the daemon wrote into stream `label`'s pipe so far.
fn stream_bytes_out(c: &mut Client, label: &str) -> u64 {
    let stats = c.call(json!({"op": "stats"})).expect("stats");
    stats["targets"][label]["bytes_out"].as_u64().unwrap_or(0)
}

#[test]
fn module_code_crosses_each_link_once() {
    // hop0 -> hop1 -> 3 leaves, all local: module code the leaves need (first asked for all
    // at once, before the hops run) leaves the daemon once; a become context on a leaf gets
    // it from the leaf's agent.
    const SIZE: usize = 3 << 20;
    let encoded = (SIZE as f64 / 3.0 * 4.0) as u64;
    let specs = local_specs(5);
    let hop0 = target(&specs[0]);
    let hop1 = via(&target(&specs[1]), &hop0);
    let leaves: Vec<Value> = (2..5).map(|i| via(&target(&specs[i]), &hop1)).collect();
    let mut sent = Vec::new();
    for (name, extra) in [
        ("via_blob_refs", &[][..]),
        ("via_blob_inline", &["--no-hop-cache"][..]),
    ] {
        let dir = scratch(name);
        let daemon = Daemon::start_with(&dir, extra);
        let mut c = daemon.client();
        let hash = blob(&mut c, SIZE, 1);
        blob_everywhere(&mut c, &leaves, &hash);
        let out = stream_bytes_out(&mut c, "local0");
        eprintln!("via: a {SIZE}-byte blob to 3 targets behind 2 hops {extra:?}: {out} bytes into the first hop");
        sent.push(out);
        if !extra.is_empty() {
            break;
        }
        // More targets behind the same hops, and the hops themselves: nothing more crosses.
        let second = blob(&mut c, 1000, 2);
        blob_everywhere(&mut c, &leaves, &second);
        let before = stream_bytes_out(&mut c, "local0");
        blob_everywhere(&mut c, &[hop1.clone(), hop0.clone()], &hash);
        let mut more = leaves.clone();
        more.push(via(&target(&specs[2]), &hop0)); // one hop only
        blob_everywhere(&mut c, &more, &second);
        if can_sudo() {
            let mut nobody = leaves[0].clone();
            nobody["become"] = json!({
                "method": "sudo", "user": "nobody", "flags": "-H -S -n",
                "cmd": "sudo -H -S -n -u nobody /bin/sh -c 'echo SPINDLE-MARK-1 ; __SPINDLE_BOOT__'",
                "success": "SPINDLE-MARK-1",
            });
            blob_everywhere(&mut c, &[nobody], &hash);
        }
        let again = stream_bytes_out(&mut c, "local0") - before;
        assert!(again < 64 * 1024, "{again} bytes more into the first hop");
    }
    assert!((sent[0] as f64) < 1.5 * encoded as f64, "{sent:?}");
    assert!(
        (sent[1] as f64) > 2.5 * encoded as f64,
        "{sent:?}: inline sends each leaf its own"
    );
}

/// Joins two fleet namespaces by a veth pair with host routes to each other's address, so
/// that `a` reaches `b`'s sshd (the fleet itself only links each target to the host).
fn link(name: &str, a: usize, a_ip: &str, b: usize, b_ip: &str) {
    let (na, nb) = (format!("sp-{name}-{a}"), format!("sp-{name}-{b}"));
    let (ia, ib) = (format!("vv{a}x{b}"), format!("vv{b}x{a}"));
    let batch = format!(
        "link add {ia} netns {na} type veth peer name {ib} netns {nb}\n\
         -n {na} link set {ia} up\n-n {nb} link set {ib} up\n\
         -n {na} route add {b_ip}/32 dev {ia}\n-n {nb} route add {a_ip}/32 dev {ib}\n"
    );
    for line in batch.lines() {
        let args: Vec<&str> = line.split_whitespace().collect();
        let o = Command::new("ip").args(&args).output().expect("ip");
        assert!(
            o.status.success(),
            "ip {line}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

fn host_tx_bytes(name: &str, i: usize) -> u64 {
    // The host side of target i's veth: what it transmits goes to the target.
    let p = format!("/sys/class/net/sp{name}h{i}/statistics/tx_bytes");
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A put to `chain[2]` (behind `chain[1]`, behind `chain[0]`) over a throttled link while
/// `chain[3]`, behind the same hop, answers an exec; both hops' memory stays flat. Returns the
/// put's time and the sibling's answer time.
fn throttled_put(
    c: &mut Client,
    chain: &[Value; 4],
    src: &std::path::Path,
    size: usize,
) -> (std::time::Duration, std::time::Duration) {
    assert_eq!(sh(c, &chain[3], "echo warm"), "warm\n");
    let pids = [
        ping(c, &chain[0])["pid"].as_u64().expect("pid"),
        ping(c, &chain[1])["pid"].as_u64().expect("pid"),
    ];
    ping(c, &chain[2]);
    let anon = |p: u64| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let before: Vec<u64> = pids.iter().map(|&p| anon(p)).collect();
    let id = c
        .send(json!({"op": "put", "target": chain[2], "src": src, "dest": "/tmp/slow"}))
        .expect("send");
    let t0 = std::time::Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = [0u64; 2];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for (k, &p) in pids.iter().enumerate() {
                    peak[k] = peak[k].max(anon(p));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        })
    };
    // Meanwhile another host behind the same bastion answers.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let t1 = std::time::Instant::now();
    assert_eq!(sh(c, &chain[3], "echo fast"), "fast\n");
    let sibling = t1.elapsed();
    let r = c.recv().expect("recv");
    assert_eq!(r.id, id);
    let took = t0.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    assert_eq!(r.result.expect("slow put")["size"], size);
    eprintln!(
        "via: {} KiB over a 16 Mbit/s last hop in {took:?} (a sibling answered in {sibling:?}); RssAnon KiB gateway {} -> peak {}, bastion {} -> peak {}",
        size / 1024, before[0], peak[0], before[1], peak[1]
    );
    for k in 0..2 {
        assert!(
            peak[k] < before[k] + 4096,
            "hop memory grew: {before:?} -> {peak:?}"
        );
    }
    (took, sibling)
}

#[test]
fn gateway_bastions_web_fleet() {
    const WEB: usize = 20;
    let name = "via";
    let Some(fleet) = Fleet::up(name, 3 + WEB) else {
        return;
    };
    let ip = |i: usize| fleet.specs[i].host.clone().expect("host");
    let bastion_of = |w: usize| if w < 3 + WEB / 2 { 1 } else { 2 };
    for b in [1, 2] {
        link(name, 0, &ip(0), b, &ip(b));
    }
    for w in 3..3 + WEB {
        link(name, bastion_of(w), &ip(bastion_of(w)), w, &ip(w));
    }
    // The controller does not reach a web host through the hops' links: each hop really
    // relays (the web hosts' sshd sees its bastion's address).
    let dir = scratch("via_fleet");
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();
    let direct: Vec<Value> = fleet.specs.iter().map(target).collect();
    let gw = direct[0].clone();
    let bastions = [via(&direct[1], &gw), via(&direct[2], &gw)];
    let webs: Vec<Value> = (3..3 + WEB)
        .map(|w| via(&direct[w], &bastions[bastion_of(w) - 1]))
        .collect();

    // Many targets through one hop set up at once (spawn_context is threaded on the hops),
    // each asked at once for module code it needs: the code crosses the controller-gateway
    // link once (the hops put it into their children's calls), not once per web host.
    let t0 = std::time::Instant::now();
    const CODE: usize = 1 << 20;
    let code = blob(&mut c, CODE, 7);
    let before = host_tx_bytes(name, 0);
    blob_everywhere(&mut c, &webs, &code);
    let setup = t0.elapsed();
    let crossed = host_tx_bytes(name, 0) - before;
    eprintln!(
        "via: {CODE} bytes of module code to {WEB} hosts behind the gateway: {crossed} bytes on the controller-gateway link ({:.2}x its base64)",
        crossed as f64 / (CODE as f64 * 4.0 / 3.0)
    );
    assert!(
        (crossed as f64) < 1.5 * CODE as f64 * 4.0 / 3.0,
        "{crossed} bytes crossed the controller-gateway link"
    );
    let pings = all(
        &mut c,
        webs.iter()
            .map(|t| json!({"op": "ping", "target": t}))
            .collect(),
    );
    let mut hostnames = Vec::new();
    for (i, p) in pings.into_iter().enumerate() {
        let v = p.unwrap_or_else(|e| panic!("web {i}: {e}"));
        hostnames.push(v["hello"]["hostname"].as_str().unwrap_or("").to_string());
    }
    eprintln!("via: {WEB} web hosts through gateway and 2 bastions up in {setup:?}");
    // Each web host's sshd saw its bastion, not the controller.
    for (k, w) in (3..3 + WEB).enumerate() {
        let from = sh(&mut c, &webs[k], "echo $SSH_CLIENT");
        assert!(
            from.starts_with(&format!("{} ", ip(bastion_of(w)))),
            "{from}"
        );
    }

    // Same results as direct connections.
    let cmd = "hostname; id -un; echo $((1+2)); cat /proc/sys/kernel/hostname";
    let via_out = all(
        &mut c,
        webs.iter()
            .map(|t| json!({"op": "exec", "target": t, "shell": cmd}))
            .collect(),
    );
    let direct_out = all(
        &mut c,
        (3..3 + WEB)
            .map(|w| json!({"op": "exec", "target": direct[w], "shell": cmd}))
            .collect(),
    );
    for (k, (a, b)) in via_out.into_iter().zip(direct_out).enumerate() {
        let (a, b) = (a.expect("via exec"), b.expect("direct exec"));
        assert_eq!(a["rc"], b["rc"]);
        assert_eq!(b64(&a, "stdout_b64"), b64(&b, "stdout_b64"));
        assert_eq!(b64(&a, "stdout_b64").lines().next(), Some(&*hostnames[k]));
    }

    // put through the hops: the file arrives whole (checked over the direct connection).
    let src = shared_dir("via_fleet").join("payload");
    let data: Vec<u8> = (0..10 * 1024 * 1024 + 17)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    std::fs::write(&src, &data).expect("payload");
    let before = host_tx_bytes(name, 0);
    let puts = all(
        &mut c,
        webs.iter()
            .map(|t| json!({"op": "put", "target": t, "src": src, "dest": "/tmp/via-payload"}))
            .collect(),
    );
    let crossed = host_tx_bytes(name, 0) - before;
    let sha = puts[0].as_ref().expect("put")["sha256"].clone();
    for (k, p) in puts.iter().enumerate() {
        let p = p.as_ref().unwrap_or_else(|e| panic!("put {k}: {e}"));
        assert_eq!(p["sha256"], sha);
        assert_eq!(p["size"], data.len());
    }
    for t in &direct[3..3 + WEB] {
        let got = sh(&mut c, t, "sha256sum /tmp/via-payload | cut -d' ' -f1");
        assert_eq!(Some(got.trim()), sha.as_str());
    }
    eprintln!(
        "via: {} bytes to {WEB} hosts behind the gateway: {crossed} bytes on the controller-gateway link ({:.2}x the file)",
        data.len(),
        crossed as f64 / data.len() as f64
    );
    // The hops' file caches: the file crosses each link once, not once per target.
    assert!(
        (crossed as f64) < 1.5 * data.len() as f64,
        "{crossed} bytes crossed the controller-gateway link"
    );
    // fetch back through the hops.
    let back = dir.join("back");
    c.call(
        json!({"op": "fetch", "target": webs[WEB - 1], "src": "/tmp/via-payload", "dest": back}),
    )
    .expect("fetch");
    assert_eq!(std::fs::read(&back).expect("fetched"), data);

    // A throttled last hop: a bastion relays at the pace of its slow link to one web host,
    // and its memory (and the gateway's) stays flat.
    let tc = Command::new("tc")
        .args([
            "-n",
            &format!("sp-{name}-1"),
            "qdisc",
            "add",
            "dev",
            "vv1x3",
            "root",
        ])
        .args([
            "tbf", "rate", "16mbit", "burst", "32kbit", "latency", "400ms",
        ])
        .status();
    if tc.is_ok_and(|s| s.success()) {
        // Through the hops' caches (relay_put on the bastion)...
        let slow_src = shared_dir("via_fleet_slow").join("payload");
        let slow: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
        std::fs::write(&slow_src, &slow).expect("payload");
        let chain = [
            gw.clone(),
            bastions[0].clone(),
            webs[0].clone(),
            webs[1].clone(),
        ];
        let (took, sibling) = throttled_put(&mut c, &chain, &slow_src, slow.len());
        assert!(sibling.as_secs_f64() < 1.5, "sibling waited {sibling:?}");
        assert!(
            took.as_secs_f64() > 1.5,
            "the link was not throttled ({took:?})"
        );
        // ...and plainly (a daemon without hop caches): frames for the slow host queue on
        // the bastion within its window while its siblings' frames go on.
        let dir2 = scratch("via_fleet_nocache");
        let plain = Daemon::start_with(&dir2, &["--no-hop-cache"]);
        let mut c2 = plain.client();
        let big_src = shared_dir("via_fleet_slow").join("plain");
        let big: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 241) as u8).collect();
        std::fs::write(&big_src, &big).expect("payload");
        let (took, sibling) = throttled_put(&mut c2, &chain, &big_src, big.len());
        assert!(
            took.as_secs_f64() > 3.0,
            "the link was not throttled ({took:?})"
        );
        assert!(
            sibling.as_secs_f64() < 1.5,
            "a sibling waited {sibling:?} behind the slow host's frames"
        );
    } else {
        eprintln!("via: tc tbf unavailable, throttled hop not tested");
    }

    // Kill bastion 1's agent: only the web hosts behind it fail; the rest carry on.
    let b1 = ping(&mut c, &bastions[0])["pid"].as_u64().expect("pid");
    let gw_pid = ping(&mut c, &gw)["pid"].as_u64().expect("pid");
    let slow: Vec<u64> = webs
        .iter()
        .map(|t| {
            c.send(json!({"op": "exec", "target": t, "shell": "sleep 2; echo done"}))
                .expect("send")
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = Command::new("kill").args(["-9", &b1.to_string()]).status();
    let mut results: HashMap<u64, Result<Value, ClientError>> = HashMap::new();
    for _ in &slow {
        let r = c.recv().expect("recv");
        results.insert(r.id, r.result);
    }
    for (k, id) in slow.iter().enumerate() {
        let w = 3 + k;
        match (&results[id], bastion_of(w)) {
            (Err(ClientError::Api { kind, host, .. }), 1) => {
                assert_eq!(kind, "connection_lost", "{host}");
            }
            (Ok(v), 2) => assert_eq!(b64(v, "stdout_b64"), "done\n"),
            (r, b) => panic!("web {w} behind bastion {b}: {r:?}"),
        }
    }
    assert_eq!(ping(&mut c, &gw)["pid"].as_u64(), Some(gw_pid));
    assert_ne!(ping(&mut c, &bastions[0])["pid"].as_u64(), Some(b1));
    // The next call behind the dead bastion opens a new chain through a new bastion agent.
    assert_eq!(
        sh(&mut c, &webs[0], "hostname"),
        format!("{}\n", hostnames[0])
    );
}
