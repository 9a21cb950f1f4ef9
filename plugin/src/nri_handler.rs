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
use crate::nri::api::Event;
use crate::nri::api::{
    Container, ContainerAdjustment, ContainerUpdate, LinuxContainerAdjustment, PodSandbox,
};
use crate::nri::{EventMask, Plugin, PluginError, PluginResult, RuntimeInfo};
use crate::policy::seccomp::nri::{from_nri_seccomp, to_nri_seccomp};
use crate::policy::seccomp::{merge_exec_notify, HostArch, MergeOutcome, SeccompPolicy};
use crate::policy::{encode_annotation, NotifyListener, SECCOMP_NOTIFY_ANNOTATION};
use crate::registry::{ContainerState, Injection, PodEntry, Registry, SyncedContainer};
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
        let mut v = self
            .micros
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
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
    pub fn new(
        registry: Arc<Registry>,
        injection: InjectionConfig,
        listener: NotifyListener,
    ) -> Self {
        AgentPlugin {
            registry,
            injection,
            listener,
            runtime: Mutex::new(None),
            create_latency: LatencyLog::default(),
        }
    }

    /// The runtime we are connected to, if any.
    pub fn runtime(&self) -> Option<RuntimeInfo> {
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn path(&self) -> InjectionPath {
        self.runtime()
            .as_ref()
            .map(InjectionPath::for_runtime)
            .unwrap_or(InjectionPath::Wrapper)
    }

    /// Builds the adjustment for one container we decided to watch.
    fn adjustment(&self, ctr: &Container) -> Result<ContainerAdjustment, String> {
        let mut adj = ContainerAdjustment::new();
        match self.path() {
            InjectionPath::Wrapper => {
                adj.annotations.insert(
                    SECCOMP_NOTIFY_ANNOTATION.to_string(),
                    encode_annotation(&self.listener),
                );
            }
            InjectionPath::Native => {
                let existing: Option<SeccompPolicy> = ctr
                    .linux
                    .as_ref()
                    .and_then(|l| l.seccomp_policy.as_ref())
                    .map(from_nri_seccomp);
                match merge_exec_notify(existing.as_ref(), &self.listener, HostArch::current()) {
                    MergeOutcome::Merged(m) => {
                        let mut linux = LinuxContainerAdjustment::new();
                        linux.seccomp_policy =
                            protobuf::MessageField::some(to_nri_seccomp(&m.policy));
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
        labels: pod
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        annotations: pod
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Identity from NRI's pod and container (pod facts from the pod when we have it, else from
/// the CRI annotations on the container).
pub fn identity(pod: Option<&PodSandbox>, ctr: &Container) -> ContainerIdentity {
    let ann = ctr
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
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
        id.pod_labels = pod
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        id.pod_annotations = pod
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
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

    async fn synchronize(
        &self,
        pods: Vec<PodSandbox>,
        containers: Vec<Container>,
    ) -> PluginResult<Vec<ContainerUpdate>> {
        let by_id: std::collections::HashMap<&str, &PodSandbox> =
            pods.iter().map(|p| (p.id.as_str(), p)).collect();
        // A container that carries our annotation (or our listener in the policy the runtime
        // reports) was injected by an earlier agent: it must be monitored, and the coverage
        // check says so if its fd is missing.
        let listener = self.listener.path();
        let entries = containers
            .iter()
            .map(|c| {
                let ours = c.annotations.contains_key(SECCOMP_NOTIFY_ANNOTATION)
                    || c.linux
                        .as_ref()
                        .and_then(|l| l.seccomp_policy.as_ref())
                        .is_some_and(|p| p.listener_path == listener);
                SyncedContainer {
                    identity: identity(by_id.get(c.pod_sandbox_id.as_str()).copied(), c),
                    state: state_of(c),
                    pid: pid_of(c),
                    injection: if ours {
                        Injection::Requested
                    } else {
                        Injection::NotDecided
                    },
                }
            })
            .collect();
        self.registry
            .synchronize(pods.iter().map(pod_entry).collect(), entries);
        Ok(Vec::new())
    }

    async fn on_disconnect(&self, reason: &str) {
        tracing::debug!(
            reason,
            "NRI connection closed; the registry keeps its entries until the next Synchronize"
        );
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

    async fn create_container(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
    ) -> PluginResult<(ContainerAdjustment, Vec<ContainerUpdate>)> {
        let started = Instant::now();
        self.registry.upsert_pod(pod_entry(pod));
        let id = identity(Some(pod), ctr);
        let is_sandbox = ctr
            .annotations
            .get(cri_annotations::CONTAINER_TYPE)
            .map(String::as_str)
            == Some(cri_annotations::TYPE_SANDBOX);
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
        self.registry
            .upsert_container(id, ContainerState::Created, None, Some(decision));
        self.create_latency.record(started);
        Ok((adj, Vec::new()))
    }

    async fn start_container(&self, pod: &PodSandbox, ctr: &Container) -> PluginResult<()> {
        self.ensure_known(pod, ctr);
        self.registry
            .set_state(&ctr.id, ContainerState::Running, pid_of(ctr));
        Ok(())
    }

    async fn stop_container(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
    ) -> PluginResult<Vec<ContainerUpdate>> {
        self.ensure_known(pod, ctr);
        self.registry
            .set_state(&ctr.id, ContainerState::Stopped, None);
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
            self.registry.upsert_container(
                identity(Some(pod), ctr),
                state_of(ctr),
                pid_of(ctr),
                None,
            );
        }
    }
}

impl From<String> for PluginError {
    fn from(s: String) -> Self {
        PluginError::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nri::api::{CreateContainerResponse, LinuxContainer, LinuxSeccomp, LinuxSyscall};
    use crate::nri::NriApiLevel;
    use crate::policy::decode_annotation;
    use protobuf::Message;

    fn runtime(version: &str) -> RuntimeInfo {
        RuntimeInfo {
            name: "containerd".into(),
            version: version.into(),
            nri_api: NriApiLevel::detect("containerd", version, ""),
            nri_version: String::new(),
            config: String::new(),
            request_timeout: None,
        }
    }

    fn plugin(injection: InjectionConfig) -> (AgentPlugin, Arc<Registry>) {
        let reg = Arc::new(Registry::new());
        let l = NotifyListener::new("/run/rce-guard/monitor.sock", "rce-guard/v1").unwrap();
        (AgentPlugin::new(reg.clone(), injection, l), reg)
    }

    fn pod(ns: &str) -> PodSandbox {
        let mut p = PodSandbox::new();
        p.id = "pod-1".into();
        p.name = "web-1".into();
        p.namespace = ns.into();
        p.uid = "uid-1".into();
        p
    }

    fn container() -> Container {
        let mut c = Container::new();
        c.id = "ctr-1".into();
        c.pod_sandbox_id = "pod-1".into();
        c.name = "app".into();
        c.annotations
            .insert(cri_annotations::IMAGE_NAME.into(), "busybox:1".into());
        c
    }

    /// containerd's RuntimeDefault shape: deny by default, exec in a big allow rule.
    fn runtime_default() -> LinuxSeccomp {
        let mut s = LinuxSeccomp::new();
        s.default_action = "SCMP_ACT_ERRNO".into();
        s.architectures = vec!["SCMP_ARCH_X86_64".into()];
        let mut allow = LinuxSyscall::new();
        allow.names = ["read", "write", "execve", "execveat", "exit_group"]
            .map(String::from)
            .to_vec();
        allow.action = "SCMP_ACT_ALLOW".into();
        s.syscalls.push(allow);
        s
    }

    #[tokio::test]
    async fn wrapper_path_on_a_0_8_runtime_adds_the_annotation() {
        let (p, reg) = plugin(InjectionConfig::default());
        p.configure(&runtime("v2.1.9")).await.unwrap();
        let (adj, _) = p
            .create_container(&pod("shop"), &container())
            .await
            .unwrap();
        let value = adj
            .annotations
            .get(SECCOMP_NOTIFY_ANNOTATION)
            .expect("annotation");
        let l = decode_annotation(value).unwrap();
        assert_eq!(l.path(), "/run/rce-guard/monitor.sock");
        assert!(
            adj.linux.is_none(),
            "no seccomp adjustment on a runtime that drops it"
        );
        let e = reg.container("ctr-1").unwrap();
        assert_eq!(e.injection, Injection::Requested);
        assert_eq!(e.identity.pod_namespace, "shop");
        assert_eq!(e.identity.image, "busybox:1");
        assert_eq!(p.create_latency.summary().0, 1);
    }

    #[tokio::test]
    async fn synchronize_marks_containers_an_earlier_agent_injected() {
        let (p, reg) = plugin(InjectionConfig::default());
        let mut ours = container();
        ours.annotations
            .insert(SECCOMP_NOTIFY_ANNOTATION.into(), "{}".into());
        let mut other = container();
        other.id = "ctr-2".into();
        p.synchronize(vec![pod("shop")], vec![ours, other])
            .await
            .unwrap();
        assert_eq!(
            reg.container("ctr-1").unwrap().injection,
            Injection::Requested
        );
        assert_eq!(
            reg.container("ctr-2").unwrap().injection,
            Injection::NotDecided
        );
    }

    #[tokio::test]
    async fn excluded_namespace_gets_nothing_and_the_reason_is_kept() {
        let (p, reg) = plugin(InjectionConfig {
            exclude_namespaces: vec!["kube-system".into()],
            ..Default::default()
        });
        p.configure(&runtime("v1.7.24")).await.unwrap();
        let (adj, _) = p
            .create_container(&pod("kube-system"), &container())
            .await
            .unwrap();
        assert!(adj.annotations.is_empty() && adj.linux.is_none());
        assert!(
            matches!(reg.container("ctr-1").unwrap().injection, Injection::Skipped(r) if r.contains("excluded"))
        );
    }

    #[tokio::test]
    async fn native_path_on_a_0_12_runtime_merges_the_policy_it_sent() {
        let (p, _) = plugin(InjectionConfig::default());
        p.configure(&runtime("v2.3.0")).await.unwrap();
        let mut c = container();
        let mut linux = LinuxContainer::new();
        linux.seccomp_policy = protobuf::MessageField::some(runtime_default());
        c.linux = protobuf::MessageField::some(linux);
        let (adj, _) = p.create_container(&pod("shop"), &c).await.unwrap();
        assert!(adj.annotations.is_empty(), "native path needs no wrapper");
        let pol = adj
            .linux
            .seccomp_policy
            .as_ref()
            .expect("seccomp_policy adjustment");
        assert_eq!(
            pol.default_action, "SCMP_ACT_ERRNO",
            "RuntimeDefault keeps denying by default"
        );
        assert_eq!(pol.listener_path, "/run/rce-guard/monitor.sock");
        let notify: Vec<&str> = pol
            .syscalls
            .iter()
            .filter(|r| r.action == "SCMP_ACT_NOTIFY")
            .flat_map(|r| r.names.iter().map(String::as_str))
            .collect();
        assert!(
            notify.contains(&"execve") && notify.contains(&"execveat"),
            "{notify:?}"
        );
        for r in pol.syscalls.iter().filter(|r| r.action == "SCMP_ACT_ALLOW") {
            assert!(
                !r.names.iter().any(|n| n.starts_with("execve")),
                "exec left in an allow rule: {r:?}"
            );
        }
        let allowed: Vec<&str> = pol
            .syscalls
            .iter()
            .filter(|r| r.action == "SCMP_ACT_ALLOW")
            .flat_map(|r| r.names.iter().map(String::as_str))
            .collect();
        assert!(allowed.contains(&"read") && allowed.contains(&"exit_group"));
        // An existing profile's architectures are kept as they are: unlisted ABIs are killed by
        // the bad-arch action, so their execve cannot run unnoticed (see policy::seccomp::merge).
        assert_eq!(pol.architectures, vec!["SCMP_ARCH_X86_64".to_string()]);
    }

    /// Reads protobuf fields (tag, wire type, bytes for LEN) without our generated code, so the
    /// test checks field numbers as containerd's decoder will see them.
    fn fields(mut b: &[u8]) -> Vec<(u32, Vec<u8>)> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            for i in 0.. {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << (7 * i);
                if byte & 0x80 == 0 {
                    break;
                }
            }
            v
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let (field, wt) = ((key >> 3) as u32, key & 7);
            match wt {
                0 => out.push((field, varint(&mut b).to_le_bytes().to_vec())),
                2 => {
                    let n = varint(&mut b) as usize;
                    out.push((field, b[..n].to_vec()));
                    b = &b[n..];
                }
                other => panic!("unexpected wire type {other}"),
            }
        }
        out
    }

    fn one(fields: &[(u32, Vec<u8>)], n: u32) -> Vec<u8> {
        let v: Vec<_> = fields.iter().filter(|(f, _)| *f == n).collect();
        assert_eq!(v.len(), 1, "field {n} appears {} times", v.len());
        v[0].1.clone()
    }

    #[tokio::test]
    async fn native_adjustment_wire_encoding_uses_nri_0_10_field_numbers() {
        let (p, _) = plugin(InjectionConfig::default());
        p.configure(&runtime("v2.3.0")).await.unwrap();
        let (adj, _) = p
            .create_container(&pod("shop"), &container())
            .await
            .unwrap();
        let mut resp = CreateContainerResponse::new();
        resp.adjust = protobuf::MessageField::some(adj);
        let bytes = resp.write_to_bytes().unwrap();
        // CreateContainerResponse.adjust = 1 -> ContainerAdjustment.linux = 6 ->
        // LinuxContainerAdjustment.seccomp_policy = 6 -> LinuxSeccomp.
        let adjust = one(&fields(&bytes), 1);
        let linux = one(&fields(&adjust), 6);
        let seccomp = fields(&one(&fields(&linux), 6));
        assert_eq!(
            one(&seccomp, 1),
            b"SCMP_ACT_ALLOW",
            "default_action = 1 (no policy: allow)"
        );
        assert_eq!(
            one(&seccomp, 5),
            b"/run/rce-guard/monitor.sock",
            "listener_path = 5"
        );
        assert_eq!(one(&seccomp, 6), b"rce-guard/v1", "listener_metadata = 6");
        let arches: Vec<Vec<u8>> = seccomp
            .iter()
            .filter(|(f, _)| *f == 3)
            .map(|(_, v)| v.clone())
            .collect();
        assert!(
            arches.contains(&b"SCMP_ARCH_X86_64".to_vec()),
            "architectures = 3"
        );
        let rules: Vec<Vec<(u32, Vec<u8>)>> = seccomp
            .iter()
            .filter(|(f, _)| *f == 7)
            .map(|(_, v)| fields(v))
            .collect();
        let notify = rules
            .iter()
            .find(|r| one(r, 2) == b"SCMP_ACT_NOTIFY")
            .expect("syscalls = 7 with action = 2");
        let names: Vec<&[u8]> = notify
            .iter()
            .filter(|(f, _)| *f == 1)
            .map(|(_, v)| v.as_slice())
            .collect();
        assert!(
            names.contains(&b"execve".as_slice()) && names.contains(&b"execveat".as_slice()),
            "names = 1"
        );
    }
}
