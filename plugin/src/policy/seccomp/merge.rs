//! The one seccomp merge used by both injection paths (NRI adjustment and runtime wrapper):
//! put `execve`/`execveat` under `SCMP_ACT_NOTIFY` to our listener without weakening the
//! container's profile.
//!
//! # How runtimes read a profile (runc 1.1.5 + libseccomp 2.5.4, checked by running it)
//! - A rule whose action equals the default action is skipped by runc before it reaches
//!   libseccomp. So under a default of ALLOW an unconditional ALLOW rule is a no-op, and a
//!   conditional ERRNO rule for the same syscall still applies.
//! - Of several unconditional rules for one syscall, the **first** wins; later ones are dropped
//!   silently, whatever their action.
//! - An unconditional rule beats every conditional rule for the same syscall, in either order.
//! - Conditional rules with different arguments and different actions coexist; with identical
//!   arguments and different actions runc fails (`file exists`).
//! - Architectures not listed in the profile hit the bad-arch action (the process is killed).
//!
//! # What the merge does, per exec syscall
//! Let "runs" mean ALLOW or LOG, "denied" ERRNO, KILL*, TRAP.
//! - First effective unconditional rule runs it: every call runs today. Drop the syscall from
//!   every rule naming it (the others were dead or no-ops) and put it in one unconditional
//!   NOTIFY rule appended at the end.
//! - First effective unconditional rule denies it: it never runs; keep it as it is.
//! - Only conditional rules, default runs: if none of them denies, as above (unconditional
//!   NOTIFY). If one denies, the profile says "run, except when ...": an unconditional NOTIFY
//!   would beat the deny (weaker), and the complement of an argument condition cannot be
//!   written in general (no "not masked-equal" operator). The policy is left alone and the
//!   reason returned.
//! - Only conditional rules, default denies: each conditional rule that runs it becomes a
//!   NOTIFY rule with the same arguments (split off when it names other syscalls too). Calls
//!   that were denied stay denied; calls that ran are now notified first.
//! - TRACE or an action we do not know decides it: left alone (a tracer could let it run, and
//!   we cannot reason about the unknown).
//!
//! Architectures of an existing profile are kept as they are: adding a compat architecture
//! would open that whole ABI to the profile's allow rules, where today it is killed. A new
//! profile (the container had none) lists the native and compat architectures, so the compat
//! ABIs keep working and their `execve` is notified too. Flags are kept and none is added
//! (runc < 1.5 refuses `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`).

use std::fmt;

use super::arch::HostArch;
use super::model::{SeccompPolicy, SyscallRule};
use crate::policy::listener::NotifyListener;

/// The syscalls that start a program.
pub const EXEC_SYSCALLS: [&str; 2] = ["execve", "execveat"];

/// OCI action names used by the merge.
pub mod action {
    pub const ALLOW: &str = "SCMP_ACT_ALLOW";
    pub const LOG: &str = "SCMP_ACT_LOG";
    pub const NOTIFY: &str = "SCMP_ACT_NOTIFY";
    pub const ERRNO: &str = "SCMP_ACT_ERRNO";
    pub const TRACE: &str = "SCMP_ACT_TRACE";
    pub const TRAP: &str = "SCMP_ACT_TRAP";
    pub const KILL: &str = "SCMP_ACT_KILL";
    pub const KILL_THREAD: &str = "SCMP_ACT_KILL_THREAD";
    pub const KILL_PROCESS: &str = "SCMP_ACT_KILL_PROCESS";
}

/// The errno runc uses for ERRNO/TRACE without an explicit one.
const DEFAULT_ERRNO: u32 = 1;

/// How one exec syscall is covered after the merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecCoverage {
    /// Every call is notified.
    Notified,
    /// Calls that the profile allows (argument conditions) are notified; the others stay
    /// denied.
    NotifiedWhereAllowed,
    /// The profile denies every call; there is nothing to watch.
    Denied,
}

/// Why a policy was not changed. The caller reports it; the container is not monitored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftAlone {
    /// Another agent already receives this container's notifications.
    ForeignListener { listener_path: String },
    /// The profile has NOTIFY rules but no listener: it is not ours and not valid either.
    NotifyWithoutListener,
    /// Runtimes refuse NOTIFY as the default action.
    DefaultActionNotify,
    /// Neither `execve` nor `execveat` can run under this profile.
    ExecDenied,
    /// The syscall runs by default but a conditional rule denies some calls: see module docs.
    ConditionalDenyUnderAllowingDefault { syscall: String, action: String },
    /// The syscall's fate depends on an action we cannot reason about (TRACE, unknown names).
    UndecidableExecAction { syscall: String, action: String },
}

impl fmt::Display for LeftAlone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeftAlone::ForeignListener { listener_path } => write!(
                f,
                "the seccomp profile already hands notifications to another listener ({listener_path})"
            ),
            LeftAlone::NotifyWithoutListener => {
                f.write_str("the seccomp profile has SCMP_ACT_NOTIFY rules without a listenerPath")
            }
            LeftAlone::DefaultActionNotify => {
                f.write_str("the seccomp profile's default action is SCMP_ACT_NOTIFY")
            }
            LeftAlone::ExecDenied => {
                f.write_str("the seccomp profile denies execve and execveat; nothing to watch")
            }
            LeftAlone::ConditionalDenyUnderAllowingDefault { syscall, action } => write!(
                f,
                "{syscall} is allowed by default but a conditional {action} rule denies some calls; \
                 a notify rule would override that deny"
            ),
            LeftAlone::UndecidableExecAction { syscall, action } => write!(
                f,
                "{syscall} is governed by {action}, which cannot be combined with a notify rule safely"
            ),
        }
    }
}

/// A merged policy and what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub policy: SeccompPolicy,
    pub execve: ExecCoverage,
    pub execveat: ExecCoverage,
    /// True when the input already was exactly this policy (merging is idempotent).
    pub unchanged: bool,
}

/// Result of [`merge_exec_notify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    Merged(Merged),
    LeftAlone(LeftAlone),
}

/// What to do with one exec syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Every call runs today: one unconditional NOTIFY rule replaces all rules naming it.
    NotifyAll,
    /// Calls run where conditional rules allow them: those rules become NOTIFY.
    NotifyWhereAllowed,
    /// Already notified to our listener.
    Already(ExecCoverage),
    /// Never runs.
    Denied,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActionClass {
    Runs,
    Notify,
    Denied,
    Undecidable,
}

fn classify(action_name: &str) -> ActionClass {
    match action_name {
        action::ALLOW | action::LOG => ActionClass::Runs,
        action::NOTIFY => ActionClass::Notify,
        action::ERRNO
        | action::TRAP
        | action::KILL
        | action::KILL_THREAD
        | action::KILL_PROCESS => ActionClass::Denied,
        _ => ActionClass::Undecidable,
    }
}

/// runc maps KILL and KILL_THREAD to the same libseccomp action.
fn canonical_action(name: &str) -> &str {
    if name == action::KILL {
        action::KILL_THREAD
    } else {
        name
    }
}

/// True when runc skips the rule because it does what the default action does.
fn is_noop_under_default(rule: &SyscallRule, policy: &SeccompPolicy) -> bool {
    is_noop(rule, &policy.default_action, policy.default_errno_ret)
}

fn is_noop(rule: &SyscallRule, default_action: &str, default_errno: Option<u32>) -> bool {
    if canonical_action(&rule.action) != canonical_action(default_action) {
        return false;
    }
    let takes_errno = matches!(rule.action.as_str(), action::ERRNO | action::TRACE);
    !takes_errno
        || rule.errno_ret.unwrap_or(DEFAULT_ERRNO) == default_errno.unwrap_or(DEFAULT_ERRNO)
}

/// Merges our exec NOTIFY rule into `existing` (`None`: the container has no seccomp at all).
pub fn merge_exec_notify(
    existing: Option<&SeccompPolicy>,
    listener: &NotifyListener,
    host: HostArch,
) -> MergeOutcome {
    let Some(existing) = existing else {
        return MergeOutcome::Merged(fresh_policy(listener, host));
    };

    let listener_path = existing.listener_path.as_deref().filter(|p| !p.is_empty());
    match listener_path {
        Some(path) if path != listener.path() => {
            return MergeOutcome::LeftAlone(LeftAlone::ForeignListener {
                listener_path: path.to_string(),
            })
        }
        None if existing
            .syscalls
            .iter()
            .any(|r| classify(&r.action) == ActionClass::Notify) =>
        {
            return MergeOutcome::LeftAlone(LeftAlone::NotifyWithoutListener)
        }
        _ => {}
    }
    if classify(&existing.default_action) == ActionClass::Notify {
        return MergeOutcome::LeftAlone(LeftAlone::DefaultActionNotify);
    }

    let mut plans = [Plan::Denied; EXEC_SYSCALLS.len()];
    for (plan, name) in plans.iter_mut().zip(EXEC_SYSCALLS) {
        match plan_for(existing, name) {
            Ok(p) => *plan = p,
            Err(reason) => return MergeOutcome::LeftAlone(reason),
        }
    }
    if plans.iter().all(|p| *p == Plan::Denied) {
        return MergeOutcome::LeftAlone(LeftAlone::ExecDenied);
    }

    let mut policy = existing.clone();
    let pick = |wanted: Plan| -> Vec<&'static str> {
        EXEC_SYSCALLS
            .iter()
            .zip(plans)
            .filter(|(_, p)| *p == wanted)
            .map(|(n, _)| *n)
            .collect()
    };
    notify_where_allowed(&mut policy, &pick(Plan::NotifyWhereAllowed));
    notify_all(&mut policy, &pick(Plan::NotifyAll));
    set_listener(&mut policy, listener);

    let coverage = |plan: Plan| match plan {
        Plan::NotifyAll => ExecCoverage::Notified,
        Plan::NotifyWhereAllowed => ExecCoverage::NotifiedWhereAllowed,
        Plan::Already(c) => c,
        Plan::Denied => ExecCoverage::Denied,
    };
    MergeOutcome::Merged(Merged {
        unchanged: policy == *existing,
        policy,
        execve: coverage(plans[0]),
        execveat: coverage(plans[1]),
    })
}

fn fresh_policy(listener: &NotifyListener, host: HostArch) -> Merged {
    let mut policy = SeccompPolicy::with_default(action::ALLOW);
    policy.architectures = host.scmp_arches().iter().map(|a| a.to_string()).collect();
    policy
        .syscalls
        .push(SyscallRule::new(&EXEC_SYSCALLS, action::NOTIFY));
    set_listener(&mut policy, listener);
    Merged {
        policy,
        execve: ExecCoverage::Notified,
        execveat: ExecCoverage::Notified,
        unchanged: false,
    }
}

fn set_listener(policy: &mut SeccompPolicy, listener: &NotifyListener) {
    policy.listener_path = Some(listener.path().to_string());
    policy.listener_metadata = Some(listener.metadata().to_string()).filter(|m| !m.is_empty());
}

/// Decides the plan for one exec syscall from the rules that runc would actually load.
fn plan_for(policy: &SeccompPolicy, name: &str) -> Result<Plan, LeftAlone> {
    let effective: Vec<&SyscallRule> = policy
        .syscalls
        .iter()
        .filter(|r| r.names_syscall(name) && !is_noop_under_default(r, policy))
        .collect();
    let undecidable = |action: &str| LeftAlone::UndecidableExecAction {
        syscall: name.to_string(),
        action: action.to_string(),
    };

    if let Some(rule) = effective.iter().find(|r| !r.is_conditional()) {
        return match classify(&rule.action) {
            ActionClass::Runs => Ok(Plan::NotifyAll),
            ActionClass::Notify => Ok(Plan::Already(ExecCoverage::Notified)),
            ActionClass::Denied => Ok(Plan::Denied),
            ActionClass::Undecidable => Err(undecidable(&rule.action)),
        };
    }

    match classify(&policy.default_action) {
        ActionClass::Runs => {
            for rule in &effective {
                match classify(&rule.action) {
                    ActionClass::Runs | ActionClass::Notify => {}
                    ActionClass::Denied => {
                        return Err(LeftAlone::ConditionalDenyUnderAllowingDefault {
                            syscall: name.to_string(),
                            action: rule.action.clone(),
                        })
                    }
                    ActionClass::Undecidable => return Err(undecidable(&rule.action)),
                }
            }
            Ok(Plan::NotifyAll)
        }
        ActionClass::Denied => {
            let (mut runs, mut notified) = (false, false);
            for rule in &effective {
                match classify(&rule.action) {
                    ActionClass::Runs => runs = true,
                    ActionClass::Notify => notified = true,
                    ActionClass::Denied => {}
                    ActionClass::Undecidable => return Err(undecidable(&rule.action)),
                }
            }
            Ok(if runs {
                Plan::NotifyWhereAllowed
            } else if notified {
                Plan::Already(ExecCoverage::NotifiedWhereAllowed)
            } else {
                Plan::Denied
            })
        }
        ActionClass::Notify => Err(LeftAlone::DefaultActionNotify),
        ActionClass::Undecidable => Err(undecidable(&policy.default_action)),
    }
}

/// Removes `names` from every rule and adds one unconditional NOTIFY rule for them. Rules left
/// without names are dropped; other syscalls of a shared rule keep their action.
fn notify_all(policy: &mut SeccompPolicy, names: &[&str]) {
    if names.is_empty() {
        return;
    }
    policy.syscalls.retain_mut(|rule| {
        let before = rule.names.len();
        rule.names.retain(|n| !names.contains(&n.as_str()));
        before == 0 || !rule.names.is_empty()
    });
    policy
        .syscalls
        .push(SyscallRule::new(names, action::NOTIFY));
}

/// Turns the conditional rules that let `names` run into NOTIFY rules with the same
/// arguments, splitting a rule that names other syscalls too (the split-off rule follows it).
fn notify_where_allowed(policy: &mut SeccompPolicy, names: &[&str]) {
    if names.is_empty() {
        return;
    }
    let (default_action, default_errno) = (policy.default_action.clone(), policy.default_errno_ret);
    let mut out = Vec::with_capacity(policy.syscalls.len() + 1);
    for mut rule in std::mem::take(&mut policy.syscalls) {
        let converts = rule.is_conditional()
            && classify(&rule.action) == ActionClass::Runs
            && !is_noop(&rule, &default_action, default_errno);
        let hit: Vec<String> = rule
            .names
            .iter()
            .filter(|n| names.contains(&n.as_str()))
            .cloned()
            .collect();
        if !converts || hit.is_empty() {
            out.push(rule);
            continue;
        }
        let mut notify = rule.clone();
        notify.names = hit;
        notify.action = action::NOTIFY.to_string();
        notify.errno_ret = None;
        rule.names.retain(|n| !names.contains(&n.as_str()));
        if !rule.names.is_empty() {
            out.push(rule);
        }
        out.push(notify);
    }
    policy.syscalls = out;
}
