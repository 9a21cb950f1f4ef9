//! What the wrapper adds to `create`: wrapper vs. plain runc 1.1.5 on the same bundle, p50 and
//! p90 over 30 runs each, interleaved. Prints the numbers; asserts only that every create
//! worked (timings on a shared 2-core VM are not a pass/fail criterion).
//!
//! Run: `cargo bench -p rce-guard --bench wrapper_create` (as root, with runc installed).

#[path = "../tests/wrapper_support/mod.rs"]
mod wrapper_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use wrapper_support::*;

const RUNS: usize = 30;

fn timed_create(bundle: &Bundle, program: &str, id: &str) -> Duration {
    let path = bundle.path().display().to_string();
    let mut cmd = bundle.runtime(program, &["create", "--bundle", &path, id]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let status = cmd.status().unwrap();
    let took = start.elapsed();
    assert!(
        status.success(),
        "{program} create {id} failed: {}",
        bundle.log_text()
    );
    took
}

/// Replaces the file by a new one (new inode, dirty pages), as containerd's write leaves it.
fn write_fresh(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("fresh");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    samples[(samples.len() * p / 100).min(samples.len() - 1)]
}

fn wrapper_overhead_on_create() {
    require_root_and_runc();
    let listener = TestListener::start();

    let plain = Bundle::new(&["/bin/true"]);
    let annotated = Bundle::new(&["/bin/true"]);
    annotated.request_monitoring(&listener.path, "cid=bench");
    let annotated_original = annotated.config_bytes();
    // The same merged policy, handed to plain runc: isolates the wrapper's own cost from the
    // cost of the notify filter and the fd handover.
    let premerged = Bundle::new(&["/bin/true"]);
    premerged.request_monitoring(&listener.path, "cid=bench");
    let id = container_id("premerge");
    let _ = premerged.create(WRAPPER, &id);
    premerged.delete(&id);
    assert_eq!(
        premerged.spec()["linux"]["seccomp"]["syscalls"][0]["action"],
        "SCMP_ACT_NOTIFY"
    );

    let mut series: [(&str, Vec<Duration>); 5] = [
        ("runc, no annotation", Vec::new()),
        ("wrapper, no annotation", Vec::new()),
        ("runc, merged notify policy", Vec::new()),
        ("wrapper, annotation (merge + rewrite)", Vec::new()),
        ("wrapper, already merged (no rewrite)", Vec::new()),
    ];
    for round in 0..RUNS {
        let cases: [(&Bundle, &str); 5] = [
            (&plain, RUNC),
            (&plain, WRAPPER),
            (&premerged, RUNC),
            (&annotated, WRAPPER),
            (&premerged, WRAPPER),
        ];
        for (i, (bundle, program)) in cases.into_iter().enumerate() {
            // containerd writes config.json just before it calls the runtime, so the file is
            // fresh (dirty in the page cache) for every create, with or without the wrapper.
            let bytes = if i == 3 {
                annotated_original.clone()
            } else {
                bundle.config_bytes()
            };
            write_fresh(&bundle.config_path(), &bytes);
            let id = container_id(&format!("bench{i}-{round}"));
            series[i].1.push(timed_create(bundle, program, &id));
            bundle.delete(&id);
        }
    }

    println!("\ncreate latency over {RUNS} runs (runc 1.1.5, busybox bundle):");
    for (name, samples) in series.iter_mut() {
        let p50 = percentile(samples, 50);
        let p90 = percentile(samples, 90);
        println!(
            "  {name:<40} p50 {:>7.2} ms   p90 {:>7.2} ms",
            ms(p50),
            ms(p90)
        );
    }
    assert_eq!(
        listener.payloads().len(),
        3 * RUNS + 1,
        "every notify create handed over"
    );
}

/// The wrapper's own cost: the real runtime is `/bin/true`, so the difference to running
/// `/bin/true` directly is parsing, merging, rewriting and one more exec.
fn wrapper_own_cost_with_true_as_the_runtime() {
    let bundle = Bundle::new(&["/bin/true"]);
    bundle.request_monitoring(&bundle.state.path().join("unused.sock"), "cid=bench");
    // A RuntimeDefault-sized profile, so that the merge has real work to do.
    let names: Vec<String> = (0..350)
        .map(|i| format!("syscall_{i}"))
        .chain(["execve".into(), "execveat".into()])
        .collect();
    bundle.edit(|spec| {
        spec["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]
        });
    });
    let original = bundle.config_bytes();
    let plain = Bundle::new(&["/bin/true"]);
    let run = |program: &str, target: &Bundle| {
        let path = target.path().display().to_string();
        let mut cmd = std::process::Command::new(program);
        cmd.args(["create", "--bundle", &path, "x"])
            .env("RCE_GUARD_REAL_RUNTIME", "/bin/true")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let start = Instant::now();
        assert!(cmd.status().unwrap().success());
        start.elapsed()
    };
    let mut direct = Vec::new();
    let mut passthrough = Vec::new();
    let mut merging = Vec::new();
    for _ in 0..RUNS * 3 {
        direct.push(run("/bin/true", &plain));
        passthrough.push(run(WRAPPER, &plain));
        std::fs::write(bundle.config_path(), &original).unwrap();
        merging.push(run(WRAPPER, &bundle));
    }
    assert_ne!(bundle.config_bytes(), original, "the merge ran");
    println!(
        "\nwrapper's own cost, {} runs, real runtime = /bin/true:",
        RUNS * 3
    );
    for (name, samples) in [
        ("/bin/true directly", &mut direct),
        ("wrapper, no annotation", &mut passthrough),
        ("wrapper, 352-syscall profile merged", &mut merging),
    ] {
        let p50 = percentile(samples, 50);
        let p90 = percentile(samples, 90);
        println!(
            "  {name:<40} p50 {:>7.2} ms   p90 {:>7.2} ms",
            ms(p50),
            ms(p90)
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    wrapper_overhead_on_create();
    wrapper_own_cost_with_true_as_the_runtime();
}
