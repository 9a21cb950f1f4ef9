//! The agent's [`ExecJudge`]: identity from the registry (or the handover payload), the rule's
//! decision, and the observation handed to the finding pipeline. Runs on the exec path: a hash
//! lookup, pure logic, and a non-blocking queue push.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::exec_event::ExecEvent;
use crate::finding::Observation;
use crate::identity::ContainerIdentity;
use crate::registry::Registry;
use crate::rule::Rule;
use crate::sinks::FindingPipeline;
use crate::verdict::{Action, ExecJudge, WatchedContainer};

/// Longest a reported exec waits for its finding to be written.
const FINDING_WRITE_WAIT: Duration = Duration::from_millis(200);

pub struct Judge {
    rule: Rule,
    registry: Arc<Registry>,
    findings: FindingPipeline,
}

impl Judge {
    pub fn new(rule: Rule, registry: Arc<Registry>, findings: FindingPipeline) -> Self {
        Judge {
            rule,
            registry,
            findings,
        }
    }

    /// The registry's view (it has pod labels and annotations) completed by the payload's
    /// CRI annotations, so a finding never lacks pod identity for a CRI container, even one
    /// the registry has not heard of yet.
    fn identity(&self, c: &WatchedContainer) -> ContainerIdentity {
        let Some(mut id) = self.registry.identity(&c.container_id) else {
            return c.identity.clone();
        };
        let fill = |dst: &mut String, src: &String| {
            if dst.is_empty() {
                dst.clone_from(src)
            }
        };
        let p = &c.identity;
        fill(&mut id.container_name, &p.container_name);
        fill(&mut id.pod_name, &p.pod_name);
        fill(&mut id.pod_namespace, &p.pod_namespace);
        fill(&mut id.pod_uid, &p.pod_uid);
        fill(&mut id.pod_sandbox_id, &p.pod_sandbox_id);
        fill(&mut id.image, &p.image);
        id
    }
}

impl ExecJudge for Judge {
    fn judge(&self, c: &WatchedContainer, ev: &ExecEvent) -> Action {
        // The common case, no socket on stdio, needs no identity at all.
        if !self.rule.stdio_may_match(ev) {
            return Action::Allow;
        }
        let identity = self.identity(c);
        let decision = self.rule.evaluate(&identity, ev);
        if let Some(ex) = &decision.exception {
            tracing::debug!(exception = %ex, program = %ev.program, container_id = %c.container_id, "exec matched an exception");
        }
        let action = decision.action;
        if decision.report {
            // Hold the exec until its finding is written: if the agent dies first, the exec is
            // still unanswered and gets judged (and reported) again after the restart.
            self.findings.submit_and_wait(
                Observation {
                    event: ev.clone(),
                    identity,
                    init_pid: c.init_pid,
                    decision,
                    time: SystemTime::now(),
                },
                FINDING_WRITE_WAIT,
            );
        }
        action
    }
}
