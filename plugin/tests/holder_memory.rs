//! The holder stays small: its resident memory with 1000 held listener fds (each with a
//! real-sized ~2 KiB runc payload), measured on the release build that ships, must stay under
//! 8 MiB. The numbers are printed (run with `--nocapture` to see them).

mod holder_support;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use holder_support::*;

const HELD: usize = 1000;
const PAYLOAD_BYTES: usize = 2048;
const LIMIT_KIB: u64 = 8 * 1024;

/// `cargo build --release -p rce-guard --bin rce-guard-holder` into the target directory these
/// tests were built in (a no-op when it is up to date); returns the binary.
fn release_holder() -> PathBuf {
    // Test executables live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("test executable under <target>/<profile>/deps")
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "rce-guard",
            "--bin",
            "rce-guard-holder",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("running cargo to build the release holder");
    assert!(status.success(), "building the release holder failed");
    let bin = target.join("release").join("rce-guard-holder");
    assert!(bin.is_file(), "{} missing after the build", bin.display());
    bin
}

/// Fills a holder with `HELD` entries, lets a judge sync them all (the holder then has sent
/// a copy of every entry), and returns (VmRSS, VmHWM) in KiB.
fn measure(bin: &Path, label: &str) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let holder = HolderProc::start_bin(bin, dir.path(), label);
    let (idle_rss, _) = holder.memory_kib();
    let mut write_ends: Vec<OwnedFd> = Vec::with_capacity(HELD);
    for i in 0..HELD {
        let payload = runc_payload(&format!("{i:064x}"), 10_000 + i as i32, PAYLOAD_BYTES);
        write_ends.push(hand_over_pipe(&holder.listener, &payload));
    }
    // Every handover is in (the judge sees them all), then the judge goes and comes back.
    let judge = Judge::connect(&holder.control);
    let (got, count) = judge.sync();
    assert_eq!(count as usize, HELD, "every handover held");
    assert!(got.iter().all(|r| r.payload.len() >= PAYLOAD_BYTES - 50));
    drop(got);
    drop(judge);
    holder.wait_log("judge disconnected", Duration::from_secs(10));
    let judge = Judge::connect(&holder.control);
    assert_eq!(judge.sync().1 as usize, HELD);
    drop(judge);
    let fds = holder.open_fds();
    assert!(fds > HELD, "the holder has an fd per entry ({fds} open)");
    let (rss, hwm) = holder.memory_kib();
    println!(
        "holder ({label} build) with {HELD} held fds, {PAYLOAD_BYTES}-byte payloads: \
         VmRSS {rss} KiB ({:.2} MiB), peak VmHWM {hwm} KiB ({:.2} MiB), idle before: {idle_rss} KiB, open fds {fds}",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    drop(write_ends);
    (rss, hwm)
}

#[test]
fn release_holder_with_1000_fds_stays_under_8_mib() {
    require_root();
    let bin = release_holder();
    let (rss, hwm) = measure(&bin, "release");
    assert!(
        rss < LIMIT_KIB,
        "holder RSS {rss} KiB with {HELD} fds is over the {LIMIT_KIB} KiB budget"
    );
    assert!(
        hwm < LIMIT_KIB,
        "holder peak RSS {hwm} KiB with {HELD} fds is over the {LIMIT_KIB} KiB budget"
    );
}

#[test]
fn debug_holder_with_1000_fds_for_comparison() {
    require_root();
    // Not a budget (debug builds are larger), but it must hold them all and not balloon.
    let (rss, _) = measure(Path::new(HOLDER_BIN), "debug");
    assert!(rss < 4 * LIMIT_KIB, "debug holder RSS {rss} KiB");
}
