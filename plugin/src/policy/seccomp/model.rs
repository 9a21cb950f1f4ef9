//! A serde model of the OCI `linux.seccomp` object that keeps what it does not understand.
//!
//! Actions, architectures, flags and operators stay plain strings: a profile may use a name
//! that this crate has never heard of (a newer runtime-spec, a vendor action), and refusing it
//! would make the wrapper fail containers that the runtime itself accepts. Fields that are not
//! modelled are kept in `unknown` and written back unchanged.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// `linux.seccomp` of an OCI runtime spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompPolicy {
    pub default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub architectures: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_metadata: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub syscalls: Vec<SyscallRule>,
    /// Fields this model does not know, written back as they came.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// One entry of `linux.seccomp.syscalls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub names: Vec<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<SyscallArg>,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// One argument condition of a rule (`linux.seccomp.syscalls[].args[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallArg {
    pub index: u32,
    pub value: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub value_two: u64,
    pub op: String,
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

impl SeccompPolicy {
    /// A policy with only a default action, as a starting point for tests and new profiles.
    pub fn with_default(action: &str) -> Self {
        SeccompPolicy {
            default_action: action.to_string(),
            default_errno_ret: None,
            architectures: Vec::new(),
            flags: Vec::new(),
            listener_path: None,
            listener_metadata: None,
            syscalls: Vec::new(),
            unknown: Map::new(),
        }
    }
}

impl SyscallRule {
    /// An unconditional rule for `names` with `action`.
    pub fn new<S: AsRef<str>>(names: &[S], action: &str) -> Self {
        SyscallRule {
            names: names.iter().map(|n| n.as_ref().to_string()).collect(),
            action: action.to_string(),
            errno_ret: None,
            args: Vec::new(),
            unknown: Map::new(),
        }
    }

    /// True when the rule matches only for some argument values.
    pub fn is_conditional(&self) -> bool {
        !self.args.is_empty()
    }

    pub fn names_syscall(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// Go writes a nil slice as `null`; treat it as empty.
fn null_as_empty<'de, D, T>(de: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(de)?.unwrap_or_default())
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let input = json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64"],
            "futureField": {"x": [1, 2]},
            "syscalls": [{
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "comment": "kept",
                "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ", "note": true}]
            }]
        });
        let policy: SeccompPolicy = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(policy.unknown["futureField"], json!({"x": [1, 2]}));
        assert_eq!(serde_json::to_value(&policy).unwrap(), input);
    }

    #[test]
    fn go_nulls_read_as_empty() {
        let policy: SeccompPolicy = serde_json::from_value(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": null,
            "flags": null,
            "syscalls": [{"names": ["x"], "action": "SCMP_ACT_LOG", "args": null}]
        }))
        .unwrap();
        assert!(policy.architectures.is_empty() && policy.flags.is_empty());
        assert!(!policy.syscalls[0].is_conditional());
    }

    #[test]
    fn missing_default_action_is_an_error() {
        let err = serde_json::from_value::<SeccompPolicy>(json!({"syscalls": []})).unwrap_err();
        assert!(err.to_string().contains("defaultAction"), "{err}");
    }

    #[test]
    fn value_two_zero_is_not_written() {
        let arg: SyscallArg =
            serde_json::from_value(json!({"index": 4, "value": 4096, "op": "SCMP_CMP_MASKED_EQ"}))
                .unwrap();
        assert_eq!(arg.value_two, 0);
        assert!(serde_json::to_value(&arg)
            .unwrap()
            .get("valueTwo")
            .is_none());
    }
}
