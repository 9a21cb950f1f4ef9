//! rce-guard's NRI plugin: keeps the [`Registry`] current from the runtime's events and, on
//! CreateContainer, asks for our seccomp notify rule on the containers that [`selection`]
//! picks, through the injection path the runtime supports.
//!
//! Injection paths:
//! - **wrapper** (NRI < 0.10: containerd 1.7-2.1; and 2.2.x, whose requests do not carry the
//!   container's existing policy): we add the annotation [`SECCOMP_NOTIFY_ANNOTATION`]; the
//!   `rce-guard-runc` wrapper merges the rule into `config.json` at `runc create`.
//! - **native** (NRI >= 0.12, containerd >= 2.3, which sends the existing policy): we merge
//!   it ourselves and return it as `linux.seccomp_policy`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;

use crate::config::InjectionConfig;
use crate::identity::{cri_annotations, ContainerIdentity};
use crate::nri::api::{Container, ContainerAdjustment, ContainerUpdate, LinuxContainerAdjustment, PodSandbox};
use crate::nri::api::Event;
use crate::nri::{EventMask, Plugin, PluginError, PluginResult, RuntimeInfo};
use crate::policy::seccomp::nri::{from_nri_seccomp, to_nri_seccomp};
use crate::policy::seccomp::{merge_exec_notify, HostArch, MergeOutcome, SeccompPolicy};
use crate::policy::{encode_annotation, NotifyListener, SECCOMP_NOTIFY_ANNOTATION};
use crate::registry::{ContainerState, Injection, PodEntry, Registry};
use crate::selection;

/// How a container gets our rule on the connected runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectionPath {
    /// Annotation for the runtime wrapper.
    Wrapper,
    /// `linux.seccomp_policy` adjustment, merged with the policy the runtime sent.
    Native,
}

impl InjectionPath {
    pub fn for_runtime(rt: &RuntimeInfo) -> InjectionPath {
        if rt.nri_api.supports_seccomp_adjustment() && rt.nri_api.reports_seccomp_policy() {
            InjectionPath::Native
        } else {
            InjectionPath::Wrapper
        }
    }
}

/// Latencies of our CreateContainer answers (containerd holds a node-wide lock meanwhile).
#[derive(Default)]
pub struct LatencyLog {
    micros: Mutex<Vec<u32>>,
}

impl LatencyLog {
    const CAP: usize = 100_000;

    fn record(&self, started: Instant) {
        let us = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
        let mut v = self.micros.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < Self::CAP {
            v.push(us);
        }
    }

    /// (count, p50, p99, max) in microseconds.
    pub fn summary(&self) -> (usize, u32, u32, u32) {
        let mut v = self.micros.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if v.is_empty() {
            return (0, 0, 0, 0);
        }
        v.sort_unstable();
        let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
        (v.len(), pick(0.5), pick(0.99), *v.last().unwrap_or(&0))
    }
}

pub struct AgentPlugin {
    registry: Arc<Registry>,
    injection: InjectionConfig,
    listener: NotifyListener,
    runtime: Mutex<Option<RuntimeInfo>>,
    pub create_latency: LatencyLog,
}

impl AgentPlugin {
    pub fn new(registry: Arc<Registry>, injection: InjectionConfig, listener: NotifyListener) -> Self {
        AgentPlugin { registry, injection, listener, runtime: Mutex::new(None), create_latency: LatencyLog::default() }
    }

    /// The runtime we are connected to, if any.
    pub fn runtime(&self) -> Option<RuntimeInfo> {
        self.runtime.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn path(&self) -> InjectionPath {
        self.runtime().as_ref().map(InjectionPath::for_runtime).unwrap_or(InjectionPath::Wrapper)
    }

    /// Builds the adjustment for one container we decided to watch.
    fn adjustment(&self, ctr: &Container) -> Result<ContainerAdjustment, String> {
        let mut adj = ContainerAdjustment::new();
        match self.path() {
            InjectionPath::Wrapper => {
                adj.annotations.insert(SECCOMP_NOTIFY_ANNOTATION.to_string(), encode_annotation(&self.listener));
            }
            InjectionPath::Native => {
                let existing: Option<SeccompPolicy> =
                    ctr.linux.as_ref().and_then(|l| l.seccomp_policy.as_ref()).map(from_nri_seccomp);
                match merge_exec_notify(existing.as_ref(), &self.listener, HostArch::current()) {
                    MergeOutcome::Merged(m) => {
                        let mut linux = LinuxContainerAdjustment::new();
                        linux.seccomp_policy = protobuf::MessageField::some(to_nri_seccomp(&m.policy));
                        adj.linux = protobuf::MessageField::some(linux);
                    }
                    MergeOutcome::LeftAlone(reason) => return Err(reason.to_string()),
                }
            }
        }
        Ok(adj)
    }
}

pub fn pod_entry(pod: &PodSandbox) -> PodEntry {
    PodEntry {
        id: pod.id.clone(),
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        uid: pod.uid.clone(),
        labels: pod.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        annotations: pod.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// Identity from NRI's pod and container (pod facts from the pod when we have it, else from
/// the CRI annotations on the container).
pub fn identity(pod: Option<&PodSandbox>, ctr: &Container) -> ContainerIdentity {
    let ann = ctr.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut id = ContainerIdentity::from_cri_annotations(&ctr.id, &ann);
    if !ctr.name.is_empty() {
        id.container_name = ctr.name.clone();
    }
    if !ctr.pod_sandbox_id.is_empty() {
        id.pod_sandbox_id = ctr.pod_sandbox_id.clone();
    }
    if let Some(pod) = pod {
        id.pod_name = pod.name.clone();
        id.pod_namespace = pod.namespace.clone();
        id.pod_uid = pod.uid.clone();
        id.pod_labels = pod.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        id.pod_annotations = pod.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    id
}

fn state_of(ctr: &Container) -> ContainerState {
    use crate::nri::api::ContainerState as S;
    match ctr.state.enum_value() {
        Ok(S::CONTAINER_CREATED) => ContainerState::Created,
        Ok(S::CONTAINER_RUNNING) => ContainerState::Running,
        Ok(S::CONTAINER_PAUSED) => ContainerState::Paused,
        Ok(S::CONTAINER_STOPPED) => ContainerState::Stopped,
        _ => ContainerState::Unknown,
    }
}

fn pid_of(ctr: &Container) -> Option<u32> {
    (ctr.pid != 0).then_some(ctr.pid)
}

#[async_trait]
impl Plugin for AgentPlugin {
    fn events(&self) -> EventMask {
        EventMask::of(&[
            Event::RUN_POD_SANDBOX,
            Event::REMOVE_POD_SANDBOX,
            Event::CREATE_CONTAINER,
            Event::START_CONTAINER,
            Event::STOP_CONTAINER,
            Event::REMOVE_CONTAINER,
            Event::UPDATE_POD_SANDBOX,
        ])
    }

    async fn configure(&self, rt: &RuntimeInfo) -> PluginResult<()> {
        let path = InjectionPath::for_runtime(rt);
        match path {
            InjectionPath::Wrapper => tracing::info!(
                runtime = %format!("{} {}", rt.name, rt.version),
                nri_api = ?rt.nri_api,
                "injection path: annotation for the rce-guard-runc wrapper (this runtime cannot merge our seccomp rule itself); containerd's runc BinaryName must point at rce-guard-runc, or containers run unmonitored (the coverage check reports them)"
            ),
            InjectionPath::Native => tracing::info!(
                runtime = %format!("{} {}", rt.name, rt.version),
                nri_api = ?rt.nri_api,
                "injection path: native NRI seccomp adjustment, merged with each container's policy"
            ),
        }
        *self.runtime.lock().unwrap_or_else(|p| p.into_inner()) = Some(rt.clone());
        Ok(())
    }

    async fn synchronize(&self, pods: Vec<PodSandbox>, containers: Vec<Container>) -> PluginResult<Vec<ContainerUpdate>> {
        let by_id: std::collections::HashMap<&str, &PodSandbox> = pods.iter().map(|p| (p.id.as_str(), p)).collect();
        let entries = containers
            .iter()
            .map(|c| (identity(by_id.get(c.pod_sandbox_id.as_str()).copied(), c), state_of(c), pid_of(c)))
            .collect();
        self.registry.synchronize(pods.iter().map(pod_entry).collect(), entries);
        Ok(Vec::new())
    }

    async fn on_disconnect(&self, reason: &str) {
        tracing::debug!(reason, "NRI connection closed; the registry keeps its entries until the next Synchronize");
    }

    async fn run_pod_sandbox(&self, pod: &PodSandbox) -> PluginResult<()> {
        self.registry.upsert_pod(pod_entry(pod));
        Ok(())
    }

    async fn update_pod_sandbox(&self, pod: &PodSandbox) -> PluginResult<()> {
        self.registry.upsert_pod(pod_entry(pod));
        Ok(())
    }

    async fn remove_pod_sandbox(&self, pod: &PodSandbox) -> PluginResult<()> {
        self.registry.remove_pod(&pod.id);
        Ok(())
    }

    async fn create_container(&self, pod: &PodSandbox, ctr: &Container) -> PluginResult<(ContainerAdjustment, Vec<ContainerUpdate>)> {
        let started = Instant::now();
        self.registry.upsert_pod(pod_entry(pod));
        let id = identity(Some(pod), ctr);
        let is_sandbox = ctr.annotations.get(cri_annotations::CONTAINER_TYPE).map(String::as_str) == Some(cri_annotations::TYPE_SANDBOX);
        let mut decision = selection::decide(&self.injection, &pod_entry(pod), is_sandbox);
        let mut adj = ContainerAdjustment::new();
        if decision == Injection::Requested {
            match self.adjustment(ctr) {
                Ok(a) => adj = a,
                Err(reason) => decision = Injection::Skipped(reason),
            }
        }
        match &decision {
            Injection::Requested => tracing::info!(
                container_id = %ctr.id, pod_namespace = %pod.namespace, pod_name = %pod.name, container_name = %ctr.name,
                path = ?self.path(), "container will be monitored"
            ),
            Injection::Skipped(reason) => tracing::info!(
                container_id = %ctr.id, pod_namespace = %pod.namespace, pod_name = %pod.name, container_name = %ctr.name,
                reason = %reason, "container left unmonitored"
            ),
            Injection::NotDecided => {}
        }
        self.registry.upsert_container(id, ContainerState::Created, None, Some(decision));
        self.create_latency.record(started);
        Ok((adj, Vec::new()))
    }

    async fn start_container(&self, pod: &PodSandbox, ctr: &Container) -> PluginResult<()> {
        self.ensure_known(pod, ctr);
        self.registry.set_state(&ctr.id, ContainerState::Running, pid_of(ctr));
        Ok(())
    }

    async fn stop_container(&self, pod: &PodSandbox, ctr: &Container) -> PluginResult<Vec<ContainerUpdate>> {
        self.ensure_known(pod, ctr);
        self.registry.set_state(&ctr.id, ContainerState::Stopped, None);
        Ok(Vec::new())
    }

    async fn remove_container(&self, _pod: &PodSandbox, ctr: &Container) -> PluginResult<()> {
        self.registry.remove_container(&ctr.id);
        Ok(())
    }
}

impl AgentPlugin {
    /// A container we missed the creation of (we connected after it) still gets an entry.
    fn ensure_known(&self, pod: &PodSandbox, ctr: &Container) {
        if self.registry.container(&ctr.id).is_none() {
            self.registry.upsert_container(identity(Some(pod), ctr), state_of(ctr), pid_of(ctr), None);
        }
    }
}

impl From<String> for PluginError {
    fn from(s: String) -> Self {
        PluginError::new(s)
    }
}
