//! `rce-guard-runc create` against bookworm's real runc 1.1.5: the merged policy reaches runc,
//! untouched bundles stay byte-identical, and a failed merge refuses the container.

mod wrapper_support;

use serde_json::json;
use wrapper_support::*;

#[test]
fn annotated_create_merges_the_rule_and_runc_dials_the_listener() {
    require_root_and_runc();
    let bundle = Bundle::new(&["/bin/true"]);
    let absent = bundle.state.path().join("no-monitor.sock");
    bundle.request_monitoring(&absent, "cid=test-a");
    let id = container_id("a");

    let out = bundle.create(WRAPPER, &id);
    bundle.delete(&id);

    // The merged policy is in config.json ...
    let seccomp = &bundle.spec()["linux"]["seccomp"];
    assert_eq!(seccomp["listenerPath"], absent.display().to_string());
    assert_eq!(seccomp["listenerMetadata"], "cid=test-a");
    assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ALLOW");
    assert_eq!(
        seccomp["syscalls"],
        json!([{"names": ["execve", "execveat"], "action": "SCMP_ACT_NOTIFY"}])
    );
    // ... and runc acted on it: it tried to hand the listener fd to the missing socket.
    assert!(!out.status.success(), "create must fail without a monitor");
    let said = format!("{}{}", text(&out.stderr), bundle.log_text());
    assert!(
        said.contains("seccomp agent") && said.contains("no-monitor.sock"),
        "runc's error should name the seccomp agent socket: {said}"
    );
}

#[test]
fn create_without_the_annotation_leaves_config_json_byte_identical() {
    require_root_and_runc();
    let bundle = Bundle::new(&["/bin/true"]);
    let before = bundle.config_bytes();
    let id = container_id("c");
    let out = bundle.create(WRAPPER, &id);
    let state = bundle.call(RUNC, &["state", &id]);
    bundle.delete(&id);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    assert!(
        text(&state.stdout).contains("\"created\""),
        "{}",
        text(&state.stdout)
    );
    assert_eq!(bundle.config_bytes(), before);
}

#[test]
fn sandbox_containers_are_untouched() {
    require_root_and_runc();
    let bundle = Bundle::new(&["/bin/true"]);
    bundle.request_monitoring(&bundle.state.path().join("absent.sock"), "cid=pause");
    bundle.annotate("io.kubernetes.cri.container-type", "sandbox");
    let before = bundle.config_bytes();
    let id = container_id("d");
    let out = bundle.create(WRAPPER, &id);
    bundle.delete(&id);
    // No notify rule: runc did not look for the (absent) listener and created the container.
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    assert_eq!(bundle.config_bytes(), before);
}

#[test]
fn unknown_fields_in_config_json_survive_the_rewrite() {
    require_root_and_runc();
    let bundle = Bundle::new(&["/bin/true"]);
    bundle.edit(|spec| {
        spec["vendor.example/extension"] = json!({"nested": [1, "two", {"three": null}]});
        spec["process"]["futureProcessField"] = json!(true);
        spec["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "seccompFutureField": {"keep": 1},
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ERRNO", "ruleComment": "x"}]
        });
    });
    bundle.request_monitoring(&bundle.state.path().join("absent.sock"), "cid=f");
    let before = bundle.spec();
    let id = container_id("f");
    let _ = bundle.create(WRAPPER, &id);
    bundle.delete(&id);

    let after = bundle.spec();
    let seccomp = &after["linux"]["seccomp"];
    assert_eq!(seccomp["seccompFutureField"], json!({"keep": 1}));
    assert_eq!(seccomp["syscalls"][0]["ruleComment"], "x");
    assert_eq!(seccomp["syscalls"][1]["action"], "SCMP_ACT_NOTIFY");
    let strip = |mut v: serde_json::Value| {
        v["linux"].as_object_mut().unwrap().remove("seccomp");
        v
    };
    assert_eq!(strip(after.clone()), strip(before));
}

#[test]
fn a_merge_failure_refuses_the_container_with_one_clear_line() {
    require_root_and_runc();
    let bundle = Bundle::new(&["/bin/true"]);
    bundle.annotate(
        rce_guard::policy::SECCOMP_NOTIFY_ANNOTATION,
        r#"{"v":2,"listenerPath":"/run/x.sock"}"#,
    );
    let before = bundle.config_bytes();
    let id = container_id("fail");
    let out = bundle.create(WRAPPER, &id);
    let log = bundle.log_text();
    let state = bundle.call(RUNC, &["state", &id]);
    bundle.delete(&id);

    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("rce-guard-runc: create {id}: "))
            && stderr.contains("version 2")
            && stderr.contains("not started"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout");
    // containerd reads the last error of the runtime log.
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert_eq!(last["msg"], stderr.trim_end());
    assert!(!state.status.success(), "runc never ran: no container");
    assert_eq!(bundle.config_bytes(), before);
}

#[test]
fn someone_elses_listener_is_left_alone_with_a_warning_in_the_runtime_log() {
    require_root_and_runc();
    let bundle = Bundle::new(&["/bin/true"]);
    bundle.edit(|spec| {
        spec["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/other-agent.sock",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]
        });
    });
    bundle.request_monitoring(&bundle.state.path().join("ours.sock"), "cid=x");
    let before = bundle.config_bytes();
    let id = container_id("foreign");
    let out = bundle.create(WRAPPER, &id);
    bundle.delete(&id);

    assert_eq!(bundle.config_bytes(), before);
    assert!(out.stdout.is_empty());
    // runc itself now fails on the other agent's missing socket; our warning is in the log.
    let log = bundle.log_text();
    assert!(
        log.contains("\"level\":\"warning\"") && log.contains("other-agent.sock"),
        "{log}"
    );
}
