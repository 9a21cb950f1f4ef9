//! Tests of the seccomp merge with realistic profiles, plus a randomized check of "never
//! weaken" against an evaluator of how runc + libseccomp read a profile.

use serde_json::{json, Value};

use super::merge::action::*;
use super::*;
use crate::policy::listener::NotifyListener;

const SOCK: &str = "/run/rce-guard/seccomp.sock";

fn listener() -> NotifyListener {
    NotifyListener::new(SOCK, "cid=0123abcd").unwrap()
}

fn policy(v: Value) -> SeccompPolicy {
    serde_json::from_value(v).expect("test profile parses")
}

fn merged(p: Option<&SeccompPolicy>) -> Merged {
    match merge_exec_notify(p, &listener(), HostArch::X86_64) {
        MergeOutcome::Merged(m) => m,
        MergeOutcome::LeftAlone(why) => panic!("left alone: {why}"),
    }
}

fn left_alone(p: &SeccompPolicy) -> LeftAlone {
    match merge_exec_notify(Some(p), &listener(), HostArch::X86_64) {
        MergeOutcome::LeftAlone(why) => why,
        MergeOutcome::Merged(m) => panic!("merged: {:#?}", m.policy),
    }
}

fn rules_naming<'a>(p: &'a SeccompPolicy, name: &str) -> Vec<&'a SyscallRule> {
    p.syscalls
        .iter()
        .filter(|r| r.names_syscall(name))
        .collect()
}

/// Shaped like the profile containerd generates for RuntimeDefault on x86_64: default errno,
/// the three x86 architectures, one large ALLOW rule that includes execve and execveat, a few
/// argument-conditional rules and an ENOSYS rule for clone3.
fn runtime_default_like() -> SeccompPolicy {
    let allowed = [
        "accept",
        "accept4",
        "access",
        "arch_prctl",
        "bind",
        "brk",
        "capget",
        "capset",
        "chdir",
        "chmod",
        "chown",
        "clock_gettime",
        "clock_nanosleep",
        "close",
        "connect",
        "dup",
        "dup2",
        "dup3",
        "epoll_create1",
        "epoll_ctl",
        "epoll_pwait",
        "epoll_wait",
        "eventfd2",
        "execve",
        "execveat",
        "exit",
        "exit_group",
        "faccessat",
        "faccessat2",
        "fchdir",
        "fchmod",
        "fchown",
        "fcntl",
        "fstat",
        "fsync",
        "futex",
        "getcwd",
        "getdents64",
        "getegid",
        "geteuid",
        "getgid",
        "getpid",
        "getppid",
        "getrandom",
        "getsockname",
        "getsockopt",
        "gettid",
        "getuid",
        "ioctl",
        "kill",
        "listen",
        "lseek",
        "madvise",
        "mkdirat",
        "mmap",
        "mprotect",
        "munmap",
        "nanosleep",
        "newfstatat",
        "openat",
        "pipe2",
        "poll",
        "prctl",
        "pread64",
        "prlimit64",
        "read",
        "readlinkat",
        "recvfrom",
        "recvmsg",
        "rename",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "sched_yield",
        "sendmsg",
        "sendto",
        "set_robust_list",
        "set_tid_address",
        "setsockopt",
        "shutdown",
        "sigaltstack",
        "socket",
        "socketpair",
        "statx",
        "sysinfo",
        "tgkill",
        "umask",
        "uname",
        "unlinkat",
        "wait4",
        "write",
        "writev",
    ];
    policy(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": allowed.to_vec(), "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288u64, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
        ]
    }))
}

#[test]
fn runtime_default_moves_exec_out_of_the_allow_rule() {
    let before = runtime_default_like();
    let m = merged(Some(&before));
    let p = &m.policy;
    assert_eq!(
        (m.execve, m.execveat),
        (ExecCoverage::Notified, ExecCoverage::Notified)
    );
    assert!(!m.unchanged);

    // The big ALLOW rule keeps everything except the two exec syscalls, in order.
    let expected_allow: Vec<String> = before.syscalls[0]
        .names
        .iter()
        .filter(|n| !EXEC_SYSCALLS.contains(&n.as_str()))
        .cloned()
        .collect();
    assert_eq!(p.syscalls[0].names, expected_allow);
    assert_eq!(p.syscalls[0].action, ALLOW);
    // The conditional rules and the ENOSYS rule are untouched.
    assert_eq!(p.syscalls[1..6], before.syscalls[1..6]);
    // Exactly one rule names each exec syscall: ours, appended, unconditional.
    assert_eq!(p.syscalls.len(), 7);
    for name in EXEC_SYSCALLS {
        let rules = rules_naming(p, name);
        assert_eq!(rules.len(), 1, "{name}");
        assert_eq!(rules[0].action, NOTIFY);
        assert!(!rules[0].is_conditional());
    }
    assert_eq!(p.listener_path.as_deref(), Some(SOCK));
    assert_eq!(p.listener_metadata.as_deref(), Some("cid=0123abcd"));
    // Default action, errno and architectures are kept.
    assert_eq!(p.default_action, ERRNO);
    assert_eq!(p.default_errno_ret, Some(1));
    assert_eq!(p.architectures, before.architectures);
    assert!(p.flags.is_empty());
}

#[test]
fn unconfined_gets_allow_default_our_rule_and_compat_arches() {
    let m = merged(None);
    let expected = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "listenerPath": SOCK,
        "listenerMetadata": "cid=0123abcd",
        "syscalls": [{"names": ["execve", "execveat"], "action": "SCMP_ACT_NOTIFY"}]
    }));
    assert_eq!(m.policy, expected);

    let MergeOutcome::Merged(arm) = merge_exec_notify(None, &listener(), HostArch::Aarch64) else {
        panic!("unconfined is always merged");
    };
    assert_eq!(
        arm.policy.architectures,
        ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    );
}

#[test]
fn existing_architectures_are_not_widened() {
    // Adding SCMP_ARCH_X86 here would let i386 syscalls run under the ALLOW rules, where the
    // bad-arch action kills them today.
    let p = policy(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["read", "execve"], "action": "SCMP_ACT_ALLOW"}]
    }));
    assert_eq!(merged(Some(&p)).policy.architectures, ["SCMP_ARCH_X86_64"]);
    let no_arches = policy(json!({"defaultAction": "SCMP_ACT_ALLOW"}));
    assert!(merged(Some(&no_arches)).policy.architectures.is_empty());
}

#[test]
fn custom_allow_default_profile_keeps_its_denies() {
    let before = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["mount", "umount2", "ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["kexec_load"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["unshare"], "action": "SCMP_ACT_LOG"}
        ]
    }));
    let m = merged(Some(&before));
    assert_eq!(m.policy.syscalls[..3], before.syscalls[..]);
    assert_eq!(
        m.policy.syscalls[3],
        SyscallRule::new(&EXEC_SYSCALLS, NOTIFY)
    );
    assert_eq!(m.policy.syscalls.len(), 4);
}

#[test]
fn a_shared_rule_is_split_so_the_others_keep_their_action() {
    let before = policy(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["execve"], "action": "SCMP_ACT_LOG"},
            {"names": ["read", "execveat", "write"], "action": "SCMP_ACT_ALLOW", "comment": "io"}
        ]
    }));
    let p = merged(Some(&before)).policy;
    assert_eq!(p.syscalls.len(), 2, "the execve-only rule is gone: {p:#?}");
    assert_eq!(p.syscalls[0].names, ["read", "write"]);
    assert_eq!(p.syscalls[0].unknown["comment"], "io");
    assert_eq!(p.syscalls[1], SyscallRule::new(&EXEC_SYSCALLS, NOTIFY));
}

#[test]
fn exec_denied_by_a_rule_stays_denied() {
    let before = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["execve"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    }));
    let m = merged(Some(&before));
    assert_eq!(
        (m.execve, m.execveat),
        (ExecCoverage::Denied, ExecCoverage::Notified)
    );
    let rules = rules_naming(&m.policy, "execve");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].action, ERRNO);
    assert_eq!(
        m.policy.syscalls[1],
        SyscallRule::new(&["execveat"], NOTIFY)
    );
}

#[test]
fn exec_denied_by_the_default_stays_denied() {
    // Default errno and only execve allowed: execveat keeps failing, execve is notified.
    let before = policy(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["read", "execve"], "action": "SCMP_ACT_ALLOW"}]
    }));
    let m = merged(Some(&before));
    assert_eq!(
        (m.execve, m.execveat),
        (ExecCoverage::Notified, ExecCoverage::Denied)
    );
    assert!(rules_naming(&m.policy, "execveat").is_empty());
}

#[test]
fn nothing_to_watch_when_both_execs_are_denied() {
    let default_deny = policy(json!({
        "defaultAction": "SCMP_ACT_KILL_PROCESS",
        "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]
    }));
    assert_eq!(left_alone(&default_deny), LeftAlone::ExecDenied);
    let rule_deny = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["execve", "execveat"], "action": "SCMP_ACT_TRAP"}]
    }));
    assert_eq!(left_alone(&rule_deny), LeftAlone::ExecDenied);
}

#[test]
fn the_first_unconditional_rule_decides_as_in_libseccomp() {
    let allow_first = policy(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["execve", "execveat"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["execve"], "action": "SCMP_ACT_KILL_PROCESS"}
        ]
    }));
    let m = merged(Some(&allow_first));
    assert_eq!(m.execve, ExecCoverage::Notified);
    // The dead KILL rule must go too, or it would become the first unconditional rule.
    assert_eq!(
        m.policy.syscalls,
        [SyscallRule::new(&EXEC_SYSCALLS, NOTIFY)]
    );

    let kill_first = policy(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["execve"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["execve", "execveat"], "action": "SCMP_ACT_ALLOW"}
        ]
    }));
    let m = merged(Some(&kill_first));
    assert_eq!(
        (m.execve, m.execveat),
        (ExecCoverage::Denied, ExecCoverage::Notified)
    );
    assert_eq!(m.policy.syscalls[0], kill_first.syscalls[0]);
    assert_eq!(m.policy.syscalls[1].names, ["execve"]);
    assert_eq!(m.policy.syscalls[1].action, ALLOW);
}

fn fexecve_condition() -> Value {
    // arg 4 of execveat (flags) with AT_EMPTY_PATH (0x1000) clear.
    json!([{"index": 4, "value": 4096, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}])
}

#[test]
fn conditional_allow_under_deny_default_becomes_conditional_notify() {
    let before = policy(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["execve", "read"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["execveat", "fchownat"], "action": "SCMP_ACT_ALLOW", "args": fexecve_condition()},
            {"names": ["execveat"], "action": "SCMP_ACT_KILL_PROCESS",
             "args": [{"index": 4, "value": 256, "op": "SCMP_CMP_EQ"}]}
        ]
    }));
    let m = merged(Some(&before));
    assert_eq!(
        (m.execve, m.execveat),
        (ExecCoverage::Notified, ExecCoverage::NotifiedWhereAllowed)
    );
    let p = &m.policy;
    assert_eq!(p.syscalls[0].names, ["read"]);
    // fchownat keeps its conditional ALLOW; execveat gets NOTIFY with the same condition,
    // right after it.
    assert_eq!(p.syscalls[1].names, ["fchownat"]);
    assert_eq!(p.syscalls[1].action, ALLOW);
    assert_eq!(p.syscalls[2].names, ["execveat"]);
    assert_eq!(p.syscalls[2].action, NOTIFY);
    assert_eq!(p.syscalls[2].args, before.syscalls[1].args);
    // The conditional deny is kept as it was.
    assert_eq!(p.syscalls[3], before.syscalls[2]);
    assert_eq!(p.syscalls[4], SyscallRule::new(&["execve"], NOTIFY));
    assert_eq!(p.syscalls.len(), 5);
}

#[test]
fn conditional_deny_under_allowing_default_is_left_alone() {
    let before = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["execveat"], "action": "SCMP_ACT_ERRNO", "args": fexecve_condition()}
        ]
    }));
    assert_eq!(
        left_alone(&before),
        LeftAlone::ConditionalDenyUnderAllowingDefault {
            syscall: "execveat".into(),
            action: ERRNO.into()
        }
    );
}

#[test]
fn an_allow_rule_equal_to_the_default_does_not_hide_a_conditional_deny() {
    // runc skips the unconditional ALLOW (same as the default): the conditional deny applies.
    let before = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["execveat"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["execveat"], "action": "SCMP_ACT_ERRNO", "args": fexecve_condition()}
        ]
    }));
    assert!(matches!(
        left_alone(&before),
        LeftAlone::ConditionalDenyUnderAllowingDefault { .. }
    ));
}

#[test]
fn an_unconditional_log_rule_beats_a_conditional_deny() {
    // LOG differs from the default, so runc loads it and it beats the conditional deny: every
    // execveat runs today, and every one is notified after the merge.
    let before = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["execveat"], "action": "SCMP_ACT_ERRNO", "args": fexecve_condition()},
            {"names": ["execveat"], "action": "SCMP_ACT_LOG"}
        ]
    }));
    let m = merged(Some(&before));
    assert_eq!(m.execveat, ExecCoverage::Notified);
    assert_eq!(
        m.policy.syscalls,
        [SyscallRule::new(&EXEC_SYSCALLS, NOTIFY)]
    );
}

#[test]
fn conditional_log_under_allow_default_becomes_unconditional_notify() {
    let before = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["execveat", "openat"], "action": "SCMP_ACT_LOG", "args": fexecve_condition()}
        ]
    }));
    let p = merged(Some(&before)).policy;
    assert_eq!(p.syscalls[0].names, ["openat"]);
    assert_eq!(p.syscalls[1], SyscallRule::new(&EXEC_SYSCALLS, NOTIFY));
}

#[test]
fn someone_elses_listener_is_left_alone() {
    let before = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "listenerPath": "/run/other-agent/notify.sock",
        "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]
    }));
    assert_eq!(
        left_alone(&before),
        LeftAlone::ForeignListener {
            listener_path: "/run/other-agent/notify.sock".into()
        }
    );
    let without_listener = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]
    }));
    assert_eq!(
        left_alone(&without_listener),
        LeftAlone::NotifyWithoutListener
    );
}

#[test]
fn notify_as_default_action_is_left_alone() {
    let before = policy(json!({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": SOCK}));
    assert_eq!(left_alone(&before), LeftAlone::DefaultActionNotify);
}

#[test]
fn trace_and_unknown_actions_are_left_alone() {
    let trace = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["execve"], "action": "SCMP_ACT_TRACE"}]
    }));
    assert_eq!(
        left_alone(&trace),
        LeftAlone::UndecidableExecAction {
            syscall: "execve".into(),
            action: TRACE.into()
        }
    );
    let unknown_default = policy(json!({
        "defaultAction": "SCMP_ACT_SOMETHING_NEW",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]
    }));
    assert!(matches!(
        left_alone(&unknown_default),
        LeftAlone::UndecidableExecAction { .. }
    ));
    // An unknown action on another syscall does not matter.
    let unknown_elsewhere = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_SOMETHING_NEW"}]
    }));
    assert_eq!(
        merged(Some(&unknown_elsewhere)).execve,
        ExecCoverage::Notified
    );
}

#[test]
fn flags_and_unknown_fields_are_kept_and_no_flag_is_added() {
    let before = policy(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
        "vendorExtension": {"keep": "me"},
        "syscalls": [{"names": ["execve", "mount"], "action": "SCMP_ACT_ERRNO", "vendorNote": 7}]
    }));
    let p = merged(Some(&before)).policy;
    assert_eq!(p.flags, ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]);
    assert_eq!(p.unknown["vendorExtension"], json!({"keep": "me"}));
    assert_eq!(p.syscalls[0].unknown["vendorNote"], 7);
}

fn idempotence_corpus() -> Vec<Option<SeccompPolicy>> {
    vec![
        None,
        Some(runtime_default_like()),
        Some(policy(json!({"defaultAction": "SCMP_ACT_ALLOW"}))),
        Some(policy(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["execveat", "fchownat"], "action": "SCMP_ACT_ALLOW", "args": fexecve_condition()},
                {"names": ["execve", "read"], "action": "SCMP_ACT_LOG"}
            ]
        }))),
        Some(policy(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["execve"], "action": "SCMP_ACT_KILL"}]
        }))),
    ]
}

#[test]
fn merging_twice_gives_the_same_policy() {
    for input in idempotence_corpus() {
        let once = merged(input.as_ref());
        let twice = merged(Some(&once.policy));
        assert_eq!(twice.policy, once.policy, "input {input:#?}");
        assert!(twice.unchanged);
        assert_eq!((twice.execve, twice.execveat), (once.execve, once.execveat));
    }
}

#[test]
fn a_second_merge_with_new_metadata_updates_only_the_metadata() {
    let once = merged(Some(&runtime_default_like()));
    let other = NotifyListener::new(SOCK, "cid=ffff").unwrap();
    let MergeOutcome::Merged(again) =
        merge_exec_notify(Some(&once.policy), &other, HostArch::X86_64)
    else {
        panic!("our own listener path must not be taken for a foreign one");
    };
    assert!(!again.unchanged);
    assert_eq!(again.policy.listener_metadata.as_deref(), Some("cid=ffff"));
    assert_eq!(again.policy.syscalls, once.policy.syscalls);
}

// ---- randomized "never weaken" check -------------------------------------------------------

/// What runc + libseccomp 2.5.4 do with one call (see the module docs of `merge`): rules
/// equal to the default are skipped, the first unconditional rule wins, otherwise the first
/// matching conditional rule (the generator never makes two conditional rules match one call
/// with different actions), otherwise the default.
fn evaluate(p: &SeccompPolicy, syscall: &str, arg0: u64) -> (String, Option<u32>) {
    let effective: Vec<&SyscallRule> = p
        .syscalls
        .iter()
        .filter(|r| r.names_syscall(syscall))
        .filter(|r| {
            let same_errno = r.errno_ret.unwrap_or(1) == p.default_errno_ret.unwrap_or(1);
            !(r.action == p.default_action && (r.action != ERRNO || same_errno))
        })
        .collect();
    let hit = effective.iter().find(|r| !r.is_conditional()).or_else(|| {
        effective
            .iter()
            .find(|r| r.args.iter().all(|a| a.index == 0 && a.value == arg0))
    });
    match hit {
        Some(r) => (r.action.clone(), r.errno_ret.filter(|_| r.action == ERRNO)),
        None => (
            p.default_action.clone(),
            p.default_errno_ret.filter(|_| p.default_action == ERRNO),
        ),
    }
}

/// A small deterministic generator (xorshift), enough to explore rule combinations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

fn random_profile(rng: &mut Rng) -> SeccompPolicy {
    const ACTIONS: [&str; 6] = [ALLOW, LOG, ERRNO, KILL_PROCESS, TRAP, ALLOW];
    const NAMES: [&str; 3] = ["execve", "execveat", "openat"];
    let mut p = SeccompPolicy::with_default(rng.pick(&[ALLOW, ERRNO, KILL_PROCESS, LOG]));
    if rng.coin() {
        p.default_errno_ret = Some(1 + (rng.next() % 2) as u32);
    }
    for _ in 0..(rng.next() % 5) {
        let mut names: Vec<&str> = NAMES.iter().copied().filter(|_| rng.coin()).collect();
        if names.is_empty() {
            names.push(rng.pick(&NAMES));
        }
        let mut rule = SyscallRule::new(&names, rng.pick(&ACTIONS));
        if rule.action == ERRNO && rng.coin() {
            rule.errno_ret = Some(1 + (rng.next() % 2) as u32);
        }
        if rng.coin() {
            rule.args.push(SyscallArg {
                index: 0,
                value: 1 + rng.next() % 3,
                value_two: 0,
                op: "SCMP_CMP_EQ".into(),
                unknown: Default::default(),
            });
        }
        p.syscalls.push(rule);
    }
    p
}

/// runc refuses two conditional rules with the same arguments and different actions.
fn runc_accepts(p: &SeccompPolicy) -> bool {
    for (i, a) in p.syscalls.iter().enumerate() {
        for b in &p.syscalls[i + 1..] {
            let shared = a.names.iter().any(|n| b.names.contains(n));
            if shared
                && a.is_conditional()
                && a.args == b.args
                && (a.action != b.action || a.errno_ret != b.errno_ret)
            {
                return false;
            }
        }
    }
    true
}

#[test]
fn random_profiles_are_never_weakened() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut merged_count, mut left_alone_count) = (0, 0);
    for _ in 0..20_000 {
        let before = random_profile(&mut rng);
        if !runc_accepts(&before) {
            continue;
        }
        let after = match merge_exec_notify(Some(&before), &listener(), HostArch::X86_64) {
            MergeOutcome::Merged(m) => m.policy,
            MergeOutcome::LeftAlone(_) => {
                left_alone_count += 1;
                continue;
            }
        };
        merged_count += 1;
        assert!(
            runc_accepts(&after),
            "merge made a profile runc refuses: {after:#?}"
        );
        for name in ["execve", "execveat", "openat"] {
            for arg0 in 0..5 {
                let (was, was_errno) = evaluate(&before, name, arg0);
                let (now, now_errno) = evaluate(&after, name, arg0);
                let ran = was == ALLOW || was == LOG;
                let expected = if ran && name != "openat" {
                    NOTIFY
                } else {
                    was.as_str()
                };
                assert!(
                    now == expected && (now == NOTIFY || now_errno == was_errno),
                    "{name}({arg0}): {was}/{was_errno:?} became {now}/{now_errno:?}\n\
                     before {before:#?}\nafter {after:#?}"
                );
            }
        }
    }
    // The generator must exercise both outcomes, or this test proves little.
    assert!(merged_count > 2_000, "only {merged_count} merged");
    assert!(left_alone_count > 500, "only {left_alone_count} left alone");
}
