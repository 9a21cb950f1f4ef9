//! What the wrapper changes in a bundle's `config.json`, as a pure function on the JSON value.
//!
//! The spec is kept as a `serde_json::Value` so that every field the wrapper does not touch,
//! known or not, is written back unchanged. Only `linux.seccomp` (when the annotation asks
//! for it) and, on request, `ociVersion` are changed.

use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::identity::cri_annotations;
use crate::policy::annotation::{decode_annotation, AnnotationError, SECCOMP_NOTIFY_ANNOTATION};
use crate::policy::seccomp::{
    merge_exec_notify, ExecCoverage, HostArch, LeftAlone, MergeOutcome, SeccompPolicy,
};

#[derive(Debug, Error)]
pub enum PatchError {
    #[error("the spec is not a JSON object")]
    NotAnObject,
    #[error("\"annotations\" is not an object of strings")]
    BadAnnotations,
    #[error(transparent)]
    Annotation(#[from] AnnotationError),
    #[error("\"linux\" is not an object")]
    LinuxNotAnObject,
    #[error("\"linux.seccomp\" cannot be read: {0}")]
    BadSeccomp(#[source] serde_json::Error),
}

/// What happened to the seccomp policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompChange {
    /// No annotation: the plugin did not ask for monitoring.
    NotRequested,
    /// The pod sandbox (pause) container is never touched.
    Sandbox,
    /// Our rule was merged in (or was already there).
    Merged {
        execve: ExecCoverage,
        execveat: ExecCoverage,
        already_there: bool,
    },
    /// The policy could not take our rule without harm; the container runs unmonitored.
    LeftAlone(LeftAlone),
}

/// The outcome of [`patch_spec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchReport {
    pub seccomp: SeccompChange,
    /// The previous `ociVersion` when it was rewritten.
    pub oci_version_replaced: Option<String>,
}

impl PatchReport {
    /// True when the spec must be written back.
    pub fn changed(&self) -> bool {
        self.oci_version_replaced.is_some()
            || matches!(
                self.seccomp,
                SeccompChange::Merged {
                    already_there: false,
                    ..
                }
            )
    }
}

/// Settings of one patch.
#[derive(Debug, Clone, Copy)]
pub struct PatchOptions<'a> {
    pub host: HostArch,
    /// Rewrite `ociVersion` to this (for runtimes older than the spec containerd writes).
    pub oci_version_override: Option<&'a str>,
}

fn annotation<'a>(spec: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, PatchError> {
    match spec.get("annotations") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(ann)) => match ann.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(PatchError::BadAnnotations),
        },
        Some(_) => Err(PatchError::BadAnnotations),
    }
}

/// Applies the wrapper's changes to a parsed `config.json`.
pub fn patch_spec(spec: &mut Value, opts: PatchOptions<'_>) -> Result<PatchReport, PatchError> {
    let spec = spec.as_object_mut().ok_or(PatchError::NotAnObject)?;
    let seccomp = patch_seccomp(spec, opts.host)?;

    let mut oci_version_replaced = None;
    if let Some(wanted) = opts.oci_version_override {
        let current = spec.get("ociVersion").and_then(Value::as_str);
        if current != Some(wanted) {
            oci_version_replaced = Some(current.unwrap_or_default().to_string());
            spec.insert("ociVersion".into(), Value::String(wanted.to_string()));
        }
    }
    Ok(PatchReport {
        seccomp,
        oci_version_replaced,
    })
}

fn patch_seccomp(
    spec: &mut Map<String, Value>,
    host: HostArch,
) -> Result<SeccompChange, PatchError> {
    let Some(request) = annotation(spec, SECCOMP_NOTIFY_ANNOTATION)? else {
        return Ok(SeccompChange::NotRequested);
    };
    if annotation(spec, cri_annotations::CONTAINER_TYPE)? == Some(cri_annotations::TYPE_SANDBOX) {
        return Ok(SeccompChange::Sandbox);
    }
    let listener = decode_annotation(request)?;

    let linux = spec
        .entry("linux")
        .or_insert_with(|| Value::Object(Map::new()));
    if linux.is_null() {
        *linux = Value::Object(Map::new());
    }
    let linux = linux.as_object_mut().ok_or(PatchError::LinuxNotAnObject)?;
    let existing: Option<SeccompPolicy> = match linux.get("seccomp") {
        None | Some(Value::Null) => None,
        Some(v) => Some(SeccompPolicy::deserialize(v).map_err(PatchError::BadSeccomp)?),
    };

    match merge_exec_notify(existing.as_ref(), &listener, host) {
        MergeOutcome::LeftAlone(why) => Ok(SeccompChange::LeftAlone(why)),
        MergeOutcome::Merged(merged) => {
            if !merged.unchanged {
                let value = serde_json::to_value(&merged.policy).map_err(PatchError::BadSeccomp)?;
                linux.insert("seccomp".into(), value);
            }
            Ok(SeccompChange::Merged {
                execve: merged.execve,
                execveat: merged.execveat,
                already_there: merged.unchanged,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::annotation::encode_annotation;
    use crate::policy::listener::NotifyListener;
    use serde_json::json;

    const OPTS: PatchOptions<'static> = PatchOptions {
        host: HostArch::X86_64,
        oci_version_override: None,
    };

    fn request() -> String {
        encode_annotation(&NotifyListener::new("/run/rce-guard/seccomp.sock", "cid=1").unwrap())
    }

    fn spec_with(annotations: Value, seccomp: Option<Value>) -> Value {
        let mut spec = json!({
            "ociVersion": "1.2.1",
            "process": {"args": ["/bin/sh"], "futureProcessField": 1},
            "root": {"path": "rootfs"},
            "annotations": annotations,
            "linux": {"namespaces": [{"type": "pid"}], "maskedPaths": ["/proc/kcore"]},
            "vendor.example/extension": {"deep": [1, {"x": null}]}
        });
        if let Some(s) = seccomp {
            spec["linux"]["seccomp"] = s;
        }
        spec
    }

    #[test]
    fn no_annotation_changes_nothing() {
        let mut spec = spec_with(
            json!({"io.kubernetes.cri.container-type": "container"}),
            None,
        );
        let before = spec.clone();
        let report = patch_spec(&mut spec, OPTS).unwrap();
        assert_eq!(report.seccomp, SeccompChange::NotRequested);
        assert!(!report.changed());
        assert_eq!(spec, before);

        let mut bare = json!({"ociVersion": "1.0.2"});
        assert!(!patch_spec(&mut bare, OPTS).unwrap().changed());
    }

    #[test]
    fn merges_and_keeps_every_other_field() {
        let mut spec = spec_with(
            json!({SECCOMP_NOTIFY_ANNOTATION: request(), "io.kubernetes.cri.container-type": "container"}),
            Some(json!({
                "defaultAction": "SCMP_ACT_ERRNO",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "syscalls": [{"names": ["read", "execve", "execveat"], "action": "SCMP_ACT_ALLOW"}],
                "seccompFutureField": "kept"
            })),
        );
        let before = spec.clone();
        let report = patch_spec(&mut spec, OPTS).unwrap();
        assert!(report.changed());
        assert!(matches!(
            report.seccomp,
            SeccompChange::Merged {
                already_there: false,
                ..
            }
        ));
        let seccomp = &spec["linux"]["seccomp"];
        assert_eq!(seccomp["listenerPath"], "/run/rce-guard/seccomp.sock");
        assert_eq!(seccomp["listenerMetadata"], "cid=1");
        assert_eq!(seccomp["seccompFutureField"], "kept");
        assert_eq!(
            seccomp["syscalls"],
            json!([
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["execve", "execveat"], "action": "SCMP_ACT_NOTIFY"}
            ])
        );
        // Everything outside linux.seccomp is as it was.
        let mut without = spec.clone();
        without["linux"].as_object_mut().unwrap().remove("seccomp");
        let mut before_without = before.clone();
        before_without["linux"]
            .as_object_mut()
            .unwrap()
            .remove("seccomp");
        assert_eq!(without, before_without);

        // A second run finds it done.
        let again = patch_spec(&mut spec, OPTS).unwrap();
        assert!(!again.changed());
    }

    #[test]
    fn no_seccomp_and_no_linux_section_get_a_fresh_policy() {
        let mut spec = json!({"annotations": {SECCOMP_NOTIFY_ANNOTATION: request()}});
        patch_spec(&mut spec, OPTS).unwrap();
        assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        let mut null_seccomp = json!({"annotations": {SECCOMP_NOTIFY_ANNOTATION: request()}, "linux": {"seccomp": null}});
        patch_spec(&mut null_seccomp, OPTS).unwrap();
        assert_eq!(
            null_seccomp["linux"]["seccomp"]["syscalls"][0]["action"],
            "SCMP_ACT_NOTIFY"
        );
    }

    #[test]
    fn sandbox_is_never_touched() {
        let mut spec = spec_with(
            json!({SECCOMP_NOTIFY_ANNOTATION: request(), "io.kubernetes.cri.container-type": "sandbox"}),
            None,
        );
        let before = spec.clone();
        let report = patch_spec(&mut spec, OPTS).unwrap();
        assert_eq!(report.seccomp, SeccompChange::Sandbox);
        assert_eq!(spec, before);
    }

    #[test]
    fn left_alone_is_reported_and_changes_nothing() {
        let mut spec = spec_with(
            json!({SECCOMP_NOTIFY_ANNOTATION: request()}),
            Some(
                json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/other.sock",
                        "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}),
            ),
        );
        let before = spec.clone();
        let report = patch_spec(&mut spec, OPTS).unwrap();
        assert!(matches!(
            report.seccomp,
            SeccompChange::LeftAlone(LeftAlone::ForeignListener { .. })
        ));
        assert!(!report.changed());
        assert_eq!(spec, before);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let bad_annotation = json!({"annotations": {SECCOMP_NOTIFY_ANNOTATION: "{\"v\":9}"}});
        let bad_seccomp = json!({"annotations": {SECCOMP_NOTIFY_ANNOTATION: request()},
                                 "linux": {"seccomp": {"syscalls": "nope"}}});
        let bad_linux = json!({"annotations": {SECCOMP_NOTIFY_ANNOTATION: request()}, "linux": 3});
        let bad_type = json!({"annotations": {SECCOMP_NOTIFY_ANNOTATION: 1}});
        for (mut spec, expected) in [
            (bad_annotation, "version 9"),
            (bad_seccomp, "linux.seccomp"),
            (bad_linux, "\"linux\""),
            (bad_type, "annotations"),
            (json!([1]), "not a JSON object"),
        ] {
            let err = patch_spec(&mut spec, OPTS).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn oci_version_override_applies_to_every_create() {
        let opts = PatchOptions {
            oci_version_override: Some("1.0.2"),
            ..OPTS
        };
        let mut spec = spec_with(json!({"io.kubernetes.cri.container-type": "sandbox"}), None);
        let report = patch_spec(&mut spec, opts).unwrap();
        assert_eq!(report.oci_version_replaced.as_deref(), Some("1.2.1"));
        assert_eq!(spec["ociVersion"], "1.0.2");
        assert!(!patch_spec(&mut spec, opts).unwrap().changed());
    }
}
