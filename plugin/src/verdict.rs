//! The seam between the monitor (which traps execs and answers the kernel) and the rule (which
//! decides and reports). The monitor calls an [`ExecJudge`] once per distinct exec.

use crate::exec_event::ExecEvent;
use crate::identity::ContainerIdentity;

/// What to answer the kernel for one exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Let the exec run (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`).
    Allow,
    /// Fail the exec with EPERM.
    Deny,
    /// Fail the exec with EPERM, then SIGKILL the caller through its pidfd.
    Kill,
}

/// The container a seccomp listener fd belongs to, as learned at handover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchedContainer {
    /// OCI container id (`state.id` of runc's payload).
    pub container_id: String,
    /// Identity from the payload's annotations; the judge may enrich it from the registry.
    pub identity: ContainerIdentity,
    /// Host pid of the container's init (`state.pid`).
    pub init_pid: i32,
    /// `listenerMetadata` as set by our policy (opaque to the monitor).
    pub metadata: String,
}

/// Decides about one exec and reports it. Called on the hot path: must not block.
pub trait ExecJudge: Send + Sync + 'static {
    fn judge(&self, container: &WatchedContainer, event: &ExecEvent) -> Action;
}
