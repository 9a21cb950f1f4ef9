//! The whole handover through the wrapper: runc 1.1.5 receives the merged policy, dials a
//! listener, hands over the seccomp fd, and the container's execs wait for our answers.

mod wrapper_support;

use std::sync::atomic::Ordering;

use serde_json::json;
use wrapper_support::*;

#[test]
fn run_hands_the_listener_fd_over_and_execs_wait_for_continue() {
    require_root_and_runc();
    let listener = TestListener::start();
    let bundle = Bundle::new(&[
        "/bin/sh",
        "-c",
        "/bin/busybox echo hello from the container",
    ]);
    bundle.request_monitoring(&listener.path, "cid=test-b");
    let id = container_id("b");

    let out = bundle.run(WRAPPER, &id);
    bundle.delete(&id);

    assert!(
        out.status.success(),
        "run: {}{}",
        text(&out.stderr),
        bundle.log_text()
    );
    assert_eq!(text(&out.stdout), "hello from the container\n");
    let payloads = listener.payloads();
    assert_eq!(payloads.len(), 1, "{payloads:?}");
    assert_eq!(payloads[0]["metadata"], "cid=test-b");
    assert_eq!(payloads[0]["state"]["id"], id.as_str());
    assert_eq!(payloads[0]["fds"], json!(["seccompFd"]));
    // runc init -> /bin/sh, and sh -> /bin/busybox: both execs were trapped and continued.
    let answered = listener.log.notifications.load(Ordering::SeqCst);
    assert!(answered >= 2, "only {answered} notifications answered");
}

#[test]
fn a_syscall_the_profile_denies_stays_denied_with_our_rule_added() {
    require_root_and_runc();
    let listener = TestListener::start();
    let bundle = Bundle::new(&[
        "/bin/sh",
        "-c",
        "/bin/busybox touch /tmp/f; /bin/busybox chmod 700 /tmp/f; echo chmod=$?; \
         /bin/busybox echo exec ok",
    ]);
    // Allow by default, deny chmod with EACCES, and execve explicitly allowed by a rule that
    // the merge has to split.
    bundle.edit(|spec| {
        spec["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [
                {"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["execve", "getpid"], "action": "SCMP_ACT_LOG"}
            ]
        });
    });
    bundle.request_monitoring(&listener.path, "cid=rd");
    let id = container_id("rd");

    let out = bundle.run(WRAPPER, &id);
    bundle.delete(&id);

    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "run: {}{}",
        text(&out.stderr),
        bundle.log_text()
    );
    assert!(
        stdout.contains("chmod=1"),
        "chmod must still fail: {stdout}"
    );
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("exec ok"), "{stdout}");
    assert!(listener.log.notifications.load(Ordering::SeqCst) >= 2);
    let syscalls = &bundle.spec()["linux"]["seccomp"]["syscalls"];
    assert_eq!(
        syscalls[1],
        json!({"names": ["getpid"], "action": "SCMP_ACT_LOG"})
    );
}
