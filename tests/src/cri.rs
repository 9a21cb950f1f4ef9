//! A blocking CRI client that drives containerd as kubelet does: host-network pod sandboxes,
//! containers from the busybox test image, exec, stop and remove.
//!
//! Each client owns a small tokio runtime and blocks on it, so tests stay plain `#[test]`
//! functions and `Drop` impls can use it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::env::BUSYBOX_IMAGE;

/// Largest CRI message either side sends (containerd's default gRPC limit).
const MAX_MESSAGE: usize = 16 << 20;

/// Default per-call timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Seccomp profile of a container, as the pod spec's `securityContext.seccompProfile` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    /// No profile in the CRI request (containerd then runs the container unconfined).
    Unset,
    RuntimeDefault,
    Unconfined,
    /// A profile file on the node, path relative to kubelet's seccomp root or absolute.
    Localhost(String),
}

/// What a pod sandbox should look like. `PodSpec::new("name")` gives namespace "default" and a
/// unique uid.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// CRI `runtime_handler`; empty for containerd's default.
    pub runtime_handler: String,
}

impl PodSpec {
    pub fn new(name: &str) -> Self {
        PodSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            uid: unique_uid(),
            labels: HashMap::new(),
            annotations: HashMap::new(),
            runtime_handler: String::new(),
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_string();
        self
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = uid.to_string();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    pub fn runtime_handler(mut self, handler: &str) -> Self {
        self.runtime_handler = handler.to_string();
        self
    }
}

/// What a container should look like. `ContainerSpec::new("name")` runs the busybox image's
/// entrypoint (`/bin/sh`); set `command`/`args` for anything useful.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub seccomp: Seccomp,
}

impl ContainerSpec {
    pub fn new(name: &str) -> Self {
        ContainerSpec {
            name: name.to_string(),
            image: BUSYBOX_IMAGE.to_string(),
            command: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            labels: HashMap::new(),
            annotations: HashMap::new(),
            seccomp: Seccomp::Unset,
        }
    }

    /// A container that sleeps for an hour. `sleep` as PID 1 ignores SIGTERM: stop it with a
    /// short timeout.
    pub fn sleeper(name: &str) -> Self {
        Self::new(name).command(&["sleep", "3600"])
    }

    pub fn image(mut self, image: &str) -> Self {
        self.image = image.to_string();
        self
    }

    pub fn command(mut self, command: &[&str]) -> Self {
        self.command = command.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    pub fn seccomp(mut self, profile: Seccomp) -> Self {
        self.seccomp = profile;
        self
    }
}

/// A pod sandbox that runs: its id and the config it was created with (CreateContainer needs
/// it again).
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub spec: PodSpec,
    pub config: api::PodSandboxConfig,
}

/// Result of ExecSync.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A CRI client bound to one containerd's gRPC socket.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    log_root: PathBuf,
    timeout: Duration,
}

impl Cri {
    /// Connects to the CRI service on `socket`. Pod logs go under `log_root`.
    pub fn connect(socket: &Path, log_root: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the CRI client's tokio runtime")?;
        let socket_path = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is required by tonic but unused: the connector always dials the socket.
                Endpoint::try_from("http://[::1]:0")?
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = socket_path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .with_context(|| format!("connecting to CRI at {}", socket.display()))?;
        Ok(Cri {
            rt,
            // containerd answers with up to 16 MiB (its gRPC limit); tonic's default is 4 MiB,
            // less than a ListPodSandbox of pods with large annotations.
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            log_root: log_root.to_path_buf(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs one CRI call with the client's timeout.
    fn call<T, F>(&self, what: &str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_within(what, self.timeout, fut)
    }

    /// Runs one CRI call with its own timeout.
    fn call_within<T, F>(&self, what: &str, timeout: Duration, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        // The timer must be created inside the runtime.
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, fut).await })
        {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(anyhow!(
                "CRI {what} failed: {:?}: {}",
                status.code(),
                status.message()
            )),
            Err(_) => Err(anyhow!("CRI {what} timed out after {timeout:?}")),
        }
    }

    pub fn version(&self) -> Result<api::VersionResponse> {
        let mut c = self.runtime.clone();
        self.call(
            "Version",
            c.version(api::VersionRequest {
                version: "v1".to_string(),
            }),
        )
    }

    /// RunPodSandbox for a host-network pod, as kubelet builds it.
    pub fn run_pod(&self, spec: &PodSpec) -> Result<Pod> {
        let log_dir = self.log_root.join(&spec.uid);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating pod log dir {}", log_dir.display()))?;
        let config = api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            // Host-network pods must not set a hostname (no private UTS namespace).
            hostname: String::new(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network_namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = self.runtime.clone();
        let response = self.call(
            "RunPodSandbox",
            c.run_pod_sandbox(api::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: spec.runtime_handler.clone(),
            }),
        )?;
        Ok(Pod {
            id: response.pod_sandbox_id,
            spec: spec.clone(),
            config,
        })
    }

    /// CreateContainer in `pod`; returns the container id. Its log is `<pod log dir>/<name>.log`.
    pub fn create_container(&self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let security = api::LinuxContainerSecurityContext {
            namespace_options: Some(host_network_namespaces()),
            seccomp: match &spec.seccomp {
                Seccomp::Unset => None,
                Seccomp::RuntimeDefault => Some(profile(
                    api::security_profile::ProfileType::RuntimeDefault,
                    "",
                )),
                Seccomp::Unconfined => {
                    Some(profile(api::security_profile::ProfileType::Unconfined, ""))
                }
                Seccomp::Localhost(path) => {
                    Some(profile(api::security_profile::ProfileType::Localhost, path))
                }
            },
            ..Default::default()
        };
        let config = api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .env
                .iter()
                .map(|(key, value)| api::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            log_path: format!("{}.log", spec.name),
            linux: Some(api::LinuxContainerConfig {
                security_context: Some(security),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = self.runtime.clone();
        let response = self.call(
            "CreateContainer",
            c.create_container(api::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }),
        )?;
        Ok(response.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        self.call(
            "StartContainer",
            c.start_container(api::StartContainerRequest {
                container_id: id.to_string(),
            }),
        )
        .map(drop)
    }

    /// CreateContainer + StartContainer.
    pub fn run_container(&self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let id = self.create_container(pod, spec)?;
        self.start_container(&id)?;
        Ok(id)
    }

    /// StopContainer: SIGTERM, then SIGKILL after `timeout` (a shell or sleep as PID 1 ignores
    /// SIGTERM, so keep it short).
    pub fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        let mut c = self.runtime.clone();
        self.call(
            "StopContainer",
            c.stop_container(api::StopContainerRequest {
                container_id: id.to_string(),
                timeout: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            }),
        )
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        self.call(
            "RemoveContainer",
            c.remove_container(api::RemoveContainerRequest {
                container_id: id.to_string(),
            }),
        )
        .map(drop)
    }

    pub fn stop_pod(&self, pod_id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        self.call(
            "StopPodSandbox",
            c.stop_pod_sandbox(api::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.to_string(),
            }),
        )
        .map(drop)
    }

    pub fn remove_pod(&self, pod_id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        self.call(
            "RemovePodSandbox",
            c.remove_pod_sandbox(api::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.to_string(),
            }),
        )
        .map(drop)
    }

    /// ExecSync: runs `cmd` in the container and waits for it (at most `timeout`, rounded up to
    /// whole seconds as CRI wants).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: Duration) -> Result<ExecResult> {
        let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let mut c = self.runtime.clone();
        let response = self.call_within(
            "ExecSync",
            self.timeout.max(timeout + Duration::from_secs(10)),
            c.exec_sync(api::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: i64::try_from(secs).unwrap_or(i64::MAX),
            }),
        )?;
        Ok(ExecResult {
            exit_code: response.exit_code,
            stdout: String::from_utf8_lossy(&response.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&response.stderr).into_owned(),
        })
    }

    pub fn list_containers(&self) -> Result<Vec<api::Container>> {
        let mut c = self.runtime.clone();
        self.call(
            "ListContainers",
            c.list_containers(api::ListContainersRequest { filter: None }),
        )
        .map(|r| r.containers)
    }

    pub fn list_pods(&self) -> Result<Vec<api::PodSandbox>> {
        let mut c = self.runtime.clone();
        self.call(
            "ListPodSandbox",
            c.list_pod_sandbox(api::ListPodSandboxRequest { filter: None }),
        )
        .map(|r| r.items)
    }

    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus> {
        let mut c = self.runtime.clone();
        self.call(
            "ContainerStatus",
            c.container_status(api::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }),
        )?
        .status
        .ok_or_else(|| anyhow!("ContainerStatus of {id} has no status"))
    }

    /// Waits until the container has exited; returns its final status (exit code, reason).
    pub fn wait_container_exit(&self, id: &str, timeout: Duration) -> Result<api::ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.container_status(id)?;
            if status.state == api::ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "container {id} still in state {} after {timeout:?}",
                    api::ContainerState::try_from(status.state)
                        .map(|s| s.as_str_name())
                        .unwrap_or("?")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Image references the CRI image service knows.
    pub fn list_images(&self) -> Result<Vec<String>> {
        let mut c = self.images.clone();
        let images = self.call(
            "ListImages",
            c.list_images(api::ListImagesRequest { filter: None }),
        )?;
        Ok(images
            .images
            .into_iter()
            .flat_map(|image| image.repo_tags)
            .collect())
    }
}

/// kubelet's namespaces for a host-network pod: node network, per-container PID, pod IPC.
fn host_network_namespaces() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Node as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

fn profile(kind: api::security_profile::ProfileType, localhost_ref: &str) -> api::SecurityProfile {
    api::SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost_ref.to_string(),
    }
}

/// A pod uid that is unique across processes and calls (kubelet uses random UUIDs).
fn unique_uid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        std::process::id(),
        n & 0xffff,
        (nanos >> 12) & 0xfff,
        nanos & 0xfff,
        n
    )
}
