//! Commands other than create/run go straight to the real runtime, and the wrapper's own help
//! does not hide runc's.

mod wrapper_support;

use std::process::Command;
use wrapper_support::*;

fn both(args: &[&str]) -> (std::process::Output, std::process::Output) {
    let wrapped = Command::new(WRAPPER)
        .env("RCE_GUARD_REAL_RUNTIME", RUNC)
        .args(args)
        .output()
        .unwrap();
    let plain = Command::new(RUNC).args(args).output().unwrap();
    (wrapped, plain)
}

#[test]
fn version_and_help_are_runcs() {
    require_root_and_runc();
    for args in [&["--version"][..], &["--help"], &["state", "--help"]] {
        let (wrapped, plain) = both(args);
        assert_eq!(wrapped.status.code(), plain.status.code(), "{args:?}");
        assert_eq!(text(&wrapped.stdout), text(&plain.stdout), "{args:?}");
    }
    let (wrapped, _) = both(&["--version"]);
    assert!(text(&wrapped.stdout).contains("runc version"));
}

#[test]
fn own_help_explains_the_wrapper() {
    let out = Command::new(WRAPPER)
        .arg("--rce-guard-help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(
        help.contains("BinaryName") && help.contains("RCE_GUARD_REAL_RUNTIME"),
        "{help}"
    );
    assert!(help.contains(rce_guard::policy::SECCOMP_NOTIFY_ANNOTATION));
}

#[test]
fn lifecycle_commands_pass_through() {
    require_root_and_runc();
    let bundle = Bundle::new(&["/bin/sleep", "30"]);
    let id = container_id("e");
    let created = bundle.create(WRAPPER, &id);
    assert!(
        created.status.success(),
        "create: {}",
        text(&created.stderr)
    );

    // Make the bundle's config unreadable garbage: commands after create must not read it.
    std::fs::write(bundle.config_path(), b"not json").unwrap();
    let state = bundle.call(WRAPPER, &["state", &id]);
    let state_json: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state_json["status"], "created");

    let start = bundle.call(WRAPPER, &["start", &id]);
    assert!(start.status.success(), "start: {}", text(&start.stderr));
    let list = bundle.call(WRAPPER, &["list", "--format", "json"]);
    assert!(text(&list.stdout).contains(&id));
    let kill = bundle.call(WRAPPER, &["kill", &id, "KILL"]);
    assert!(kill.status.success(), "kill: {}", text(&kill.stderr));
    assert!(wait_for(std::time::Duration::from_secs(5), || {
        let s = bundle.call(RUNC, &["state", &id]);
        text(&s.stdout).contains("\"stopped\"")
    }));
    let delete = bundle.call(WRAPPER, &["delete", &id]);
    assert!(delete.status.success(), "delete: {}", text(&delete.stderr));
    let gone = bundle.call(RUNC, &["state", &id]);
    assert!(!gone.status.success());
}

#[test]
fn a_wrapper_pointed_at_itself_refuses_instead_of_looping() {
    let out = Command::new(WRAPPER)
        .env("RCE_GUARD_REAL_RUNTIME", WRAPPER)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is the wrapper itself"),
        "{}",
        text(&out.stderr)
    );
}
