//! Conversion between the OCI model and NRI's `LinuxSeccomp` message (NRI >= 0.10): the
//! merged policy goes out as `LinuxContainerAdjustment.seccomp_policy`; containerd >= 2.3 sends
//! the existing one in `LinuxContainer.seccomp_policy`.
//!
//! The message has no room for fields the model does not know: they are dropped on the way
//! out. containerd drops `default_errno` when it applies the adjustment, so a profile whose
//! default errno is not EPERM is weakened to EPERM by the runtime; nothing here can change that.

use protobuf::MessageField;
use rce_guard_proto::{LinuxSeccomp, LinuxSeccompArg, LinuxSyscall, OptionalUInt32};

use super::model::{SeccompPolicy, SyscallArg, SyscallRule};

fn optional_u32(v: Option<u32>) -> MessageField<OptionalUInt32> {
    match v {
        Some(value) => MessageField::some(OptionalUInt32 {
            value,
            ..Default::default()
        }),
        None => MessageField::none(),
    }
}

/// The policy as an NRI message.
pub fn to_nri_seccomp(policy: &SeccompPolicy) -> LinuxSeccomp {
    LinuxSeccomp {
        default_action: policy.default_action.clone(),
        default_errno: optional_u32(policy.default_errno_ret),
        architectures: policy.architectures.clone(),
        flags: policy.flags.clone(),
        listener_path: policy.listener_path.clone().unwrap_or_default(),
        listener_metadata: policy.listener_metadata.clone().unwrap_or_default(),
        syscalls: policy
            .syscalls
            .iter()
            .map(|rule| LinuxSyscall {
                names: rule.names.clone(),
                action: rule.action.clone(),
                errno_ret: optional_u32(rule.errno_ret),
                args: rule
                    .args
                    .iter()
                    .map(|a| LinuxSeccompArg {
                        index: a.index,
                        value: a.value,
                        value_two: a.value_two,
                        op: a.op.clone(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The model of an NRI message (an empty string means "not set").
pub fn from_nri_seccomp(msg: &LinuxSeccomp) -> SeccompPolicy {
    let non_empty = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    let mut policy = SeccompPolicy::with_default(&msg.default_action);
    policy.default_errno_ret = msg.default_errno.as_ref().map(|o| o.value);
    policy.architectures = msg.architectures.clone();
    policy.flags = msg.flags.clone();
    policy.listener_path = non_empty(&msg.listener_path);
    policy.listener_metadata = non_empty(&msg.listener_metadata);
    policy.syscalls = msg
        .syscalls
        .iter()
        .map(|s| {
            let mut rule = SyscallRule::new(&s.names, &s.action);
            rule.errno_ret = s.errno_ret.as_ref().map(|o| o.value);
            rule.args = s
                .args
                .iter()
                .map(|a| SyscallArg {
                    index: a.index,
                    value: a.value,
                    value_two: a.value_two,
                    op: a.op.clone(),
                    unknown: Default::default(),
                })
                .collect();
            rule
        })
        .collect();
    policy
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;
    use serde_json::json;

    fn sample() -> SeccompPolicy {
        serde_json::from_value(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "listenerPath": "/run/rce-guard/seccomp.sock",
            "listenerMetadata": "cid=1",
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "valueTwo": 3, "op": "SCMP_CMP_EQ"}]},
                {"names": ["execve", "execveat"], "action": "SCMP_ACT_NOTIFY"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn round_trips_through_the_wire() {
        let policy = sample();
        let bytes = to_nri_seccomp(&policy).write_to_bytes().unwrap();
        let back = from_nri_seccomp(&LinuxSeccomp::parse_from_bytes(&bytes).unwrap());
        assert_eq!(back, policy);
    }

    #[test]
    fn optional_fields_map_to_presence() {
        let msg = to_nri_seccomp(&sample());
        assert_eq!(msg.default_errno.value, 1);
        assert!(msg.syscalls[0].errno_ret.is_none());
        assert_eq!(msg.syscalls[1].errno_ret.value, 38);
        assert_eq!(msg.syscalls[2].args[0].value_two, 3);

        let unset = from_nri_seccomp(&LinuxSeccomp {
            default_action: "SCMP_ACT_ALLOW".into(),
            ..Default::default()
        });
        assert_eq!(unset.listener_path, None);
        assert_eq!(unset.default_errno_ret, None);
    }
}
