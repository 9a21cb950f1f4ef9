//! The container registry: what the runtime told us about every pod and container, kept
//! current from NRI's Synchronize and lifecycle events. It is the source of pod identity for
//! findings and of the coverage view (`rce-guard status`).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::SystemTime;

use serde::Serialize;

use crate::identity::ContainerIdentity;

/// Lifecycle state as NRI reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    Unknown,
    Created,
    Running,
    Paused,
    Stopped,
}

/// Why and whether a container carries our seccomp notify rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "decision", content = "reason")]
pub enum Injection {
    /// Not decided by us: existed before the agent started (cannot be injected after the fact),
    /// or learned only from Synchronize.
    NotDecided,
    /// We asked for the notify rule.
    Requested,
    /// We left it alone, and why.
    Skipped(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerEntry {
    pub identity: ContainerIdentity,
    pub state: ContainerState,
    /// Host pid of the container's init, when known.
    pub pid: Option<u32>,
    pub injection: Injection,
    #[serde(with = "unix_secs")]
    pub first_seen: SystemTime,
    /// When the runtime reported it running (for the coverage check).
    #[serde(with = "opt_unix_secs")]
    pub started_at: Option<SystemTime>,
}

/// A pod sandbox as NRI reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PodEntry {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Default)]
struct Inner {
    pods: HashMap<String, PodEntry>,
    containers: HashMap<String, ContainerEntry>,
}

/// Thread-safe registry. Reads (on the exec path) take a shared lock for a hash lookup only.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Inner>,
}

/// One container as the runtime's Synchronize reports it.
#[derive(Debug, Clone)]
pub struct SyncedContainer {
    pub identity: ContainerIdentity,
    pub state: ContainerState,
    pub pid: Option<u32>,
    /// `Requested` when the container carries our rule from an earlier agent, else
    /// `NotDecided`.
    pub injection: Injection,
}

/// How an entry reached the registry, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Synchronize,
    Event,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Synchronize => "synchronize",
            Source::Event => "event",
        }
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock must not take identity away from every later finding.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces everything with the runtime's full state (Synchronize after every (re)connect).
    /// Injection decisions and start times of containers that are still there are kept.
    pub fn synchronize(&self, pods: Vec<PodEntry>, containers: Vec<SyncedContainer>) {
        let mut inner = self.write();
        let mut old = std::mem::take(&mut inner.containers);
        inner.pods = pods.into_iter().map(|p| (p.id.clone(), p)).collect();
        for SyncedContainer {
            identity,
            state,
            pid,
            injection,
        } in containers
        {
            let prev = old.remove(&identity.container_id);
            let is_new = prev.is_none();
            let entry = match prev {
                Some(mut e) => {
                    e.identity = identity;
                    e.state = state;
                    e.pid = pid.or(e.pid);
                    if e.injection == Injection::NotDecided {
                        e.injection = injection;
                    }
                    e
                }
                None => ContainerEntry {
                    identity,
                    state,
                    pid,
                    injection,
                    first_seen: SystemTime::now(),
                    started_at: (state == ContainerState::Running).then(SystemTime::now),
                },
            };
            if is_new {
                log_registered(&entry, Source::Synchronize);
            }
            inner
                .containers
                .insert(entry.identity.container_id.clone(), entry);
        }
        for id in old.keys() {
            tracing::info!(container_id = %id, "container removed");
        }
    }

    pub fn upsert_pod(&self, pod: PodEntry) {
        self.write().pods.insert(pod.id.clone(), pod);
    }

    pub fn remove_pod(&self, pod_id: &str) {
        self.write().pods.remove(pod_id);
    }

    pub fn pod(&self, pod_id: &str) -> Option<PodEntry> {
        self.read().pods.get(pod_id).cloned()
    }

    /// Adds or updates a container from a lifecycle event.
    pub fn upsert_container(
        &self,
        identity: ContainerIdentity,
        state: ContainerState,
        pid: Option<u32>,
        injection: Option<Injection>,
    ) {
        let mut inner = self.write();
        let id = identity.container_id.clone();
        match inner.containers.get_mut(&id) {
            Some(e) => {
                e.identity = identity;
                if state == ContainerState::Running && e.state != ContainerState::Running {
                    e.started_at = Some(SystemTime::now());
                }
                e.state = state;
                e.pid = pid.or(e.pid);
                if let Some(inj) = injection {
                    e.injection = inj;
                }
            }
            None => {
                let entry = ContainerEntry {
                    identity,
                    state,
                    pid,
                    injection: injection.unwrap_or(Injection::NotDecided),
                    first_seen: SystemTime::now(),
                    started_at: (state == ContainerState::Running).then(SystemTime::now),
                };
                log_registered(&entry, Source::Event);
                inner.containers.insert(id, entry);
            }
        }
    }

    /// Records a state change of a known container (unknown ids are ignored).
    pub fn set_state(&self, container_id: &str, state: ContainerState, pid: Option<u32>) {
        if let Some(e) = self.write().containers.get_mut(container_id) {
            if state == ContainerState::Running && e.state != ContainerState::Running {
                e.started_at = Some(SystemTime::now());
            }
            e.state = state;
            e.pid = pid.or(e.pid);
        }
    }

    pub fn remove_container(&self, container_id: &str) {
        if self.write().containers.remove(container_id).is_some() {
            tracing::info!(container_id = %container_id, "container removed");
        }
    }

    /// Identity of a container, with its pod's labels and annotations filled in.
    pub fn identity(&self, container_id: &str) -> Option<ContainerIdentity> {
        let inner = self.read();
        let entry = inner.containers.get(container_id)?;
        let mut id = entry.identity.clone();
        if id.pod_labels.is_empty() {
            if let Some(pod) = inner.pods.get(&id.pod_sandbox_id) {
                id.pod_labels = pod.labels.clone();
                id.pod_annotations = pod.annotations.clone();
            }
        }
        Some(id)
    }

    pub fn container(&self, container_id: &str) -> Option<ContainerEntry> {
        self.read().containers.get(container_id).cloned()
    }

    /// Every container, sorted by pod namespace, pod name, container name.
    pub fn containers(&self) -> Vec<ContainerEntry> {
        let mut v: Vec<_> = self.read().containers.values().cloned().collect();
        v.sort_by(|a, b| {
            let key = |e: &ContainerEntry| {
                (
                    e.identity.pod_namespace.clone(),
                    e.identity.pod_name.clone(),
                    e.identity.container_name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        v
    }

    pub fn len(&self) -> (usize, usize) {
        let inner = self.read();
        (inner.pods.len(), inner.containers.len())
    }
}

fn log_registered(entry: &ContainerEntry, source: Source) {
    let id = &entry.identity;
    tracing::info!(
        container_id = %id.container_id,
        container_name = %id.container_name,
        pod_name = %id.pod_name,
        pod_namespace = %id.pod_namespace,
        pod_uid = %id.pod_uid,
        image = %id.image,
        state = ?entry.state,
        source = source.as_str(),
        "container registered"
    );
}

mod unix_secs {
    use std::time::{SystemTime, UNIX_EPOCH};
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }
}

mod opt_unix_secs {
    use std::time::{SystemTime, UNIX_EPOCH};
    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(
                &t.duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            ),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(id: &str, pod: &str) -> ContainerIdentity {
        ContainerIdentity {
            container_id: id.into(),
            container_name: format!("c-{id}"),
            pod_sandbox_id: pod.into(),
            pod_name: format!("pod-{pod}"),
            pod_namespace: "ns".into(),
            ..Default::default()
        }
    }

    #[test]
    fn events_add_update_and_remove() {
        let r = Registry::new();
        r.upsert_pod(PodEntry {
            id: "p1".into(),
            labels: [("app".into(), "web".into())].into(),
            ..Default::default()
        });
        r.upsert_container(
            ident("a", "p1"),
            ContainerState::Created,
            None,
            Some(Injection::Requested),
        );
        r.set_state("a", ContainerState::Running, Some(42));
        let e = r.container("a").unwrap();
        assert_eq!(e.state, ContainerState::Running);
        assert_eq!(e.pid, Some(42));
        assert!(e.started_at.is_some());
        assert_eq!(e.injection, Injection::Requested);
        // pod labels are joined in from the pod entry
        assert_eq!(
            r.identity("a")
                .unwrap()
                .pod_labels
                .get("app")
                .map(String::as_str),
            Some("web")
        );
        r.remove_container("a");
        assert!(r.identity("a").is_none());
    }

    fn synced(
        identity: ContainerIdentity,
        state: ContainerState,
        pid: Option<u32>,
    ) -> SyncedContainer {
        SyncedContainer {
            identity,
            state,
            pid,
            injection: Injection::NotDecided,
        }
    }

    #[test]
    fn synchronize_replaces_state_but_keeps_decisions() {
        let r = Registry::new();
        r.upsert_container(
            ident("keep", "p"),
            ContainerState::Running,
            Some(1),
            Some(Injection::Requested),
        );
        r.upsert_container(ident("gone", "p"), ContainerState::Running, Some(2), None);
        r.synchronize(
            vec![PodEntry {
                id: "p".into(),
                ..Default::default()
            }],
            vec![
                synced(ident("keep", "p"), ContainerState::Running, Some(1)),
                synced(ident("new", "p"), ContainerState::Created, None),
            ],
        );
        assert_eq!(r.container("keep").unwrap().injection, Injection::Requested);
        assert_eq!(r.container("new").unwrap().injection, Injection::NotDecided);
        assert!(r.container("gone").is_none());
        assert_eq!(r.len(), (1, 2));
    }
}
