//! put/fetch of a 1 GiB file to and from 4 real sshd targets: checksums equal, and the daemon's
//! peak RSS stays under 64 MiB (files stream in bounded chunks, never whole in memory).

mod common;
use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

const SIZE: usize = 1 << 30;

fn sha256_file(p: &std::path::Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("{:x}", h.finalize())
}

#[test]
fn put_and_fetch_1gib_to_4_targets_in_bounded_memory() {
    let Some(fleet) = Fleet::up("xfer", 4) else {
        return;
    };
    let dir = scratch("transfer_1g");
    // Where the targets write: a directory they share with the controller (their /tmp,
    // /var/tmp and /root are private, and this checkout may live under /tmp).
    let shared = shared_dir("transfer_1g");
    let src = dir.join("big.bin");
    {
        // Pseudo-random, incompressible content (xorshift), written in 1 MiB blocks.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..SIZE / block.len() {
            for c in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&block).unwrap();
        }
    }
    let want = sha256_file(&src);
    let daemon = Daemon::start(&dir);
    let mut c = daemon.client();

    // put to all four at once
    let mut ids = Vec::new();
    for (i, s) in fleet.specs.iter().enumerate() {
        let dest = shared.join(format!("on_target_{i}.bin"));
        ids.push(
            c.send(
                json!({"op": "put", "target": target(s), "src": src, "dest": dest, "mode": 0o600}),
            )
            .unwrap(),
        );
    }
    for _ in &ids {
        let r = c.recv().unwrap();
        let v = r.result.expect("put ok");
        assert_eq!(v["size"], SIZE as u64);
        assert_eq!(v["sha256"], want);
    }
    for i in 0..4 {
        let p = shared.join(format!("on_target_{i}.bin"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // fetch back from all four at once
    for (i, s) in fleet.specs.iter().enumerate() {
        let from = shared.join(format!("on_target_{i}.bin"));
        let to = dir.join(format!("fetched_{i}.bin"));
        c.send(json!({"op": "fetch", "target": target(s), "src": from, "dest": to}))
            .unwrap();
    }
    for _ in 0..4 {
        let v = c.recv().unwrap().result.expect("fetch ok");
        assert_eq!(v["sha256"], want);
    }
    for i in 0..4 {
        assert_eq!(
            sha256_file(&dir.join(format!("fetched_{i}.bin"))),
            want,
            "fetched_{i}"
        );
        let _ = std::fs::remove_file(shared.join(format!("on_target_{i}.bin")));
        let _ = std::fs::remove_file(dir.join(format!("fetched_{i}.bin")));
    }
    let st = c.call(json!({"op": "stats"})).unwrap();
    let (spliced, copied) = (
        st["transfer"]["file_bytes_spliced"].as_u64().unwrap(),
        st["transfer"]["file_bytes_copied"].as_u64().unwrap(),
    );
    eprintln!("put payload: {spliced} bytes spliced, {copied} copied through user space");
    assert_eq!(spliced + copied, 4 * SIZE as u64);
    assert!(copied * 100 < spliced, "zero-copy path: < 1% copied");
    let rss = daemon.peak_rss_kib();
    eprintln!("daemon peak RSS during 4 x 1 GiB put+fetch: {} KiB", rss);
    assert!(rss > 0 && rss < 64 * 1024, "peak RSS {rss} KiB");
    let _ = std::fs::remove_file(&src);
    let _ = std::fs::remove_dir_all(&shared);
}
