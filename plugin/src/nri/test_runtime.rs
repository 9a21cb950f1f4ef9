//! Our own test runtime: a hand-written stand-in for containerd's side of NRI, built from
//! the same multiplexer and ttrpc as the stub, listening on a real unix socket. It drives
//! the [`Stub`] end to end in-process. It is not containerd; the real-runtime tests live
//! in the `tests/` crate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream;
use rce_guard_proto::nri_ttrpc::{self, PluginClient};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::time::timeout;
use ttrpc::asynchronous::transport::{Listener, Socket};
use ttrpc::asynchronous::{Server, TtrpcContext};

use super::api::{
    ConfigureRequest, Container, ContainerAdjustment, ContainerUpdate, CreateContainerRequest,
    Empty, Event, LinuxContainerAdjustment, LinuxSeccomp, LinuxSyscall, PodSandbox,
    RegisterPluginRequest, StartContainerRequest, StateChangeEvent, SynchronizeRequest,
    UpdateContainersRequest, UpdateContainersResponse, ValidateContainerAdjustmentRequest,
};
use super::mux::{Mux, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use super::{EventMask, Plugin, PluginResult, RuntimeInfo, Stub, StubOptions};

const T: Duration = Duration::from_secs(10);

/// The runtime's `Runtime` service: records registrations and update requests.
struct TestRuntimeService {
    registered: mpsc::UnboundedSender<RegisterPluginRequest>,
    updates: mpsc::UnboundedSender<UpdateContainersRequest>,
}

#[async_trait]
impl nri_ttrpc::Runtime for TestRuntimeService {
    async fn register_plugin(
        &self,
        _ctx: &TtrpcContext,
        req: RegisterPluginRequest,
    ) -> ttrpc::Result<Empty> {
        let _ = self.registered.send(req);
        Ok(Empty::new())
    }

    async fn update_containers(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainersRequest,
    ) -> ttrpc::Result<UpdateContainersResponse> {
        let failed = req.update.clone();
        let _ = self.updates.send(req);
        // Report everything as failed so the caller can see the reply made it back.
        Ok(UpdateContainersResponse {
            failed,
            ..Default::default()
        })
    }
}

/// A listening test runtime.
struct TestRuntime {
    listener: UnixListener,
    dir: tempfile::TempDir,
}

/// One plugin connection as the test runtime sees it.
struct TestRuntimeConn {
    plugin: PluginClient,
    registered: RegisterPluginRequest,
    updates: mpsc::UnboundedReceiver<UpdateContainersRequest>,
    // Kept alive for the connection's lifetime; dropped to simulate a runtime restart.
    _server: Server,
    _mux: Mux,
}

impl TestRuntime {
    fn new() -> TestRuntime {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join("nri.sock")).unwrap();
        TestRuntime { listener, dir }
    }

    fn options(&self) -> StubOptions {
        StubOptions {
            socket_path: self.dir.path().join("nri.sock"),
            reconnect_min: Duration::from_millis(20),
            reconnect_max: Duration::from_millis(200),
            use_launch_env: false,
            ..StubOptions::default()
        }
    }

    /// Accepts a plugin and waits for its RegisterPlugin, as containerd does.
    async fn accept(&self) -> TestRuntimeConn {
        let (stream, _) = timeout(T, self.listener.accept()).await.unwrap().unwrap();
        let (mux, [plugin_conn, runtime_conn]) =
            Mux::start(stream, [PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]).unwrap();
        let (reg_tx, mut reg_rx) = mpsc::unbounded_channel();
        let (upd_tx, updates) = mpsc::unbounded_channel();
        let service = Arc::new(TestRuntimeService {
            registered: reg_tx,
            updates: upd_tx,
        });
        let mut server = Server::new()
            .add_listener(Listener::new(stream::once(async move {
                Ok::<_, std::io::Error>(runtime_conn)
            })))
            .register_service(nri_ttrpc::create_runtime(service));
        server.start().await.unwrap();
        let plugin = PluginClient::new(ttrpc::asynchronous::Client::new(Socket::new(plugin_conn)));
        let registered = timeout(T, reg_rx.recv()).await.unwrap().unwrap();
        TestRuntimeConn {
            plugin,
            registered,
            updates,
            _server: server,
            _mux: mux,
        }
    }
}

/// Collects the stub's log lines, for the messages operators and e2e tests look for.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// Captures logs of this thread (tokio tests run every task on the test thread).
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines_with(&self, message: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(message))
            .map(str::to_owned)
            .collect()
    }
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(T)
}

fn configure_request(version: &str) -> ConfigureRequest {
    ConfigureRequest {
        runtime_name: "containerd".into(),
        runtime_version: version.into(),
        registration_timeout: 5000,
        request_timeout: 2000,
        ..Default::default()
    }
}

fn pod(id: &str) -> PodSandbox {
    PodSandbox {
        id: id.into(),
        name: format!("{id}-name"),
        uid: format!("{id}-uid"),
        namespace: "default".into(),
        ..Default::default()
    }
}

fn container(id: &str, pod_id: &str) -> Container {
    Container {
        id: id.into(),
        pod_sandbox_id: pod_id.into(),
        name: format!("{id}-name"),
        args: vec!["/bin/sh".into()],
        ..Default::default()
    }
}

fn status_code(err: &ttrpc::Error) -> Option<ttrpc::Code> {
    match err {
        ttrpc::Error::RpcStatus(status) => Some(status.code()),
        _ => None,
    }
}

/// What the recording plugin saw.
#[derive(Default)]
struct Seen {
    runtime: Vec<RuntimeInfo>,
    syncs: Vec<(Vec<String>, Vec<String>)>,
    created: Vec<(String, String)>,
    removed: Vec<String>,
    disconnects: Vec<String>,
}

/// A plugin that records its calls and adjusts new containers with a large seccomp
/// policy (so the reply is well over one 4096-byte frame).
struct RecordingPlugin {
    seen: Mutex<Seen>,
}

impl RecordingPlugin {
    fn new() -> Arc<RecordingPlugin> {
        Arc::new(RecordingPlugin {
            seen: Mutex::new(Seen::default()),
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }
}

const SYSCALLS_IN_ADJUSTMENT: usize = 400;

#[async_trait]
impl Plugin for RecordingPlugin {
    fn events(&self) -> EventMask {
        EventMask::of(&[
            Event::CREATE_CONTAINER,
            Event::REMOVE_CONTAINER,
            Event::VALIDATE_CONTAINER_ADJUSTMENT,
        ])
    }

    async fn configure(&self, runtime: &RuntimeInfo) -> PluginResult<()> {
        self.seen().runtime.push(runtime.clone());
        Ok(())
    }

    async fn synchronize(
        &self,
        pods: Vec<PodSandbox>,
        containers: Vec<Container>,
    ) -> PluginResult<Vec<ContainerUpdate>> {
        let update = containers
            .iter()
            .map(|c| ContainerUpdate {
                container_id: c.id.clone(),
                ignore_failure: true,
                ..Default::default()
            })
            .collect();
        self.seen().syncs.push((
            pods.into_iter().map(|p| p.id).collect(),
            containers.into_iter().map(|c| c.id).collect(),
        ));
        Ok(update)
    }

    async fn create_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> PluginResult<(ContainerAdjustment, Vec<ContainerUpdate>)> {
        self.seen()
            .created
            .push((pod.name.clone(), container.name.clone()));
        let mut adjust = ContainerAdjustment::new();
        adjust
            .annotations
            .insert("test.rce-guard/seen".into(), container.id.clone());
        let seccomp = LinuxSeccomp {
            default_action: "SCMP_ACT_ERRNO".into(),
            listener_path: "/run/rce-guard/listener.sock".into(),
            syscalls: (0..SYSCALLS_IN_ADJUSTMENT)
                .map(|i| LinuxSyscall {
                    names: vec![format!("syscall_{i}")],
                    action: "SCMP_ACT_ALLOW".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        adjust.linux = Some(LinuxContainerAdjustment {
            seccomp_policy: Some(seccomp).into(),
            ..Default::default()
        })
        .into();
        Ok((adjust, Vec::new()))
    }

    async fn remove_container(&self, _pod: &PodSandbox, container: &Container) -> PluginResult<()> {
        self.seen().removed.push(container.id.clone());
        Ok(())
    }

    async fn validate_container_adjustment(
        &self,
        _request: &ValidateContainerAdjustmentRequest,
    ) -> PluginResult<()> {
        Err(super::PluginError::new(
            "validation must not reach a 0.8 plugin",
        ))
    }

    async fn on_disconnect(&self, reason: &str) {
        self.seen().disconnects.push(reason.to_owned());
    }
}

#[tokio::test]
async fn stub_registers_configures_syncs_and_adjusts_against_test_runtime() {
    let logs = CapturedLogs::default();
    let _guard = logs.install();
    let runtime = TestRuntime::new();
    let plugin = RecordingPlugin::new();
    let stub = Stub::new(plugin.clone(), runtime.options());
    let stub_task = tokio::spawn(stub.run());

    let conn = runtime.accept().await;
    assert_eq!(conn.registered.plugin_name, "rce-guard");
    assert_eq!(conn.registered.plugin_idx, "10");
    assert!(!conn.registered.nri_version.is_empty());

    // containerd 2.1 speaks NRI 0.8: only events 1..=11 may be subscribed.
    let configured = timeout(
        T,
        conn.plugin.configure(ctx(), &configure_request("v2.1.9")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        configured.events as u32,
        EventMask::of(&[Event::CREATE_CONTAINER, Event::REMOVE_CONTAINER]).bits()
    );
    assert_eq!(configured.events as u32 & !0x7ff, 0);
    {
        let seen = plugin.seen();
        assert_eq!(seen.runtime.len(), 1);
        assert_eq!(seen.runtime[0].nri_api, super::NriApiLevel::V0_8);
        assert_eq!(
            seen.runtime[0].request_timeout,
            Some(Duration::from_secs(2))
        );
    }

    // A Synchronize split in two chunks reaches the plugin once, merged.
    let first = SynchronizeRequest {
        pods: vec![pod("p1")],
        containers: vec![container("c1", "p1")],
        more: true,
        ..Default::default()
    };
    let reply = timeout(T, conn.plugin.synchronize(ctx(), &first))
        .await
        .unwrap()
        .unwrap();
    assert!(
        reply.more,
        "an intermediate chunk must be answered with more=true"
    );
    assert!(reply.update.is_empty());
    assert!(plugin.seen().syncs.is_empty());
    let last = SynchronizeRequest {
        pods: vec![pod("p2")],
        containers: vec![container("c2", "p2")],
        more: false,
        ..Default::default()
    };
    let reply = timeout(T, conn.plugin.synchronize(ctx(), &last))
        .await
        .unwrap()
        .unwrap();
    assert!(!reply.more);
    let updated: Vec<_> = reply
        .update
        .iter()
        .map(|u| u.container_id.as_str())
        .collect();
    assert_eq!(updated, ["c1", "c2"]);
    assert_eq!(
        plugin.seen().syncs,
        vec![(
            vec!["p1".to_owned(), "p2".to_owned()],
            vec!["c1".to_owned(), "c2".to_owned()]
        )]
    );

    // Unsubscribed events answer UNIMPLEMENTED (12), never NOT_FOUND.
    let start = StartContainerRequest {
        pod: Some(pod("p1")).into(),
        container: Some(container("c1", "p1")).into(),
        ..Default::default()
    };
    let err = timeout(T, conn.plugin.start_container(ctx(), &start))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        status_code(&err),
        Some(ttrpc::Code::UNIMPLEMENTED),
        "{err:?}"
    );
    assert_eq!(ttrpc::Code::UNIMPLEMENTED as i32, 12);
    // Wanted by the plugin, but masked out for this 0.8 runtime.
    let validate = ValidateContainerAdjustmentRequest::new();
    let err = timeout(
        T,
        conn.plugin.validate_container_adjustment(ctx(), &validate),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(
        status_code(&err),
        Some(ttrpc::Code::UNIMPLEMENTED),
        "{err:?}"
    );

    // CreateContainer returns the plugin's adjustment, big reply and all.
    let create = CreateContainerRequest {
        pod: Some(pod("p3")).into(),
        container: Some(container("c3", "p3")).into(),
        ..Default::default()
    };
    let reply = timeout(T, conn.plugin.create_container(ctx(), &create))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        reply
            .adjust
            .annotations
            .get("test.rce-guard/seen")
            .map(String::as_str),
        Some("c3")
    );
    let seccomp = &reply.adjust.linux.seccomp_policy;
    assert_eq!(seccomp.syscalls.len(), SYSCALLS_IN_ADJUSTMENT);
    assert_eq!(seccomp.listener_path, "/run/rce-guard/listener.sock");
    assert!(
        protobuf::Message::compute_size(&reply) > 4096,
        "the reply should need more than one frame"
    );
    assert_eq!(
        plugin.seen().created,
        vec![("p3-name".to_owned(), "c3-name".to_owned())]
    );

    // Pre-0.12 runtimes deliver most events through StateChange.
    let removed = StateChangeEvent {
        event: Event::REMOVE_CONTAINER.into(),
        pod: Some(pod("p3")).into(),
        container: Some(container("c3", "p3")).into(),
        ..Default::default()
    };
    timeout(T, conn.plugin.state_change(ctx(), &removed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plugin.seen().removed, vec!["c3".to_owned()]);

    let registered = logs.lines_with("registered with runtime");
    assert_eq!(registered.len(), 1, "{registered:?}");
    for field in [
        "runtime_name=containerd",
        "runtime_version=v2.1.9",
        "nri_api=0.8",
        "events=0x408 (CREATE_CONTAINER|REMOVE_CONTAINER)",
    ] {
        assert!(
            registered[0].contains(field),
            "{field} in {}",
            registered[0]
        );
    }
    let synchronized = logs.lines_with("synchronized");
    assert_eq!(synchronized.len(), 1, "{synchronized:?}");
    for field in ["pods=2", "containers=2", "chunks=2"] {
        assert!(
            synchronized[0].contains(field),
            "{field} in {}",
            synchronized[0]
        );
    }

    assert!(!stub_task.is_finished());
    stub_task.abort();
}

#[tokio::test]
async fn stub_reconnects_and_reregisters_after_restart_against_test_runtime() {
    let logs = CapturedLogs::default();
    let _guard = logs.install();
    let runtime = TestRuntime::new();
    let plugin = RecordingPlugin::new();
    let stub = Stub::new(plugin.clone(), runtime.options());
    let handle = stub.runtime_handle();
    let stub_task = tokio::spawn(stub.run());

    let mut conn = runtime.accept().await;
    timeout(
        T,
        conn.plugin.configure(ctx(), &configure_request("v2.2.1")),
    )
    .await
    .unwrap()
    .unwrap();
    // The runtime handle reaches the runtime's UpdateContainers.
    let failed = handle
        .update_containers(
            vec![ContainerUpdate {
                container_id: "c9".into(),
                ..Default::default()
            }],
            Vec::new(),
            T,
        )
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].container_id, "c9");
    let sent = timeout(T, conn.updates.recv()).await.unwrap().unwrap();
    assert_eq!(sent.update[0].container_id, "c9");

    // "Restart" the runtime: drop its side of the connection.
    drop(conn);
    let conn = runtime.accept().await;
    assert_eq!(conn.registered.plugin_name, "rce-guard");
    assert_eq!(plugin.seen().disconnects.len(), 1);
    // A 2.2.1 runtime (NRI 0.11) gets the validation event too.
    let configured = timeout(
        T,
        conn.plugin.configure(ctx(), &configure_request("v2.2.1")),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(EventMask::from_bits_truncate(configured.events as u32)
        .contains(Event::VALIDATE_CONTAINER_ADJUSTMENT));
    assert!(handle.is_connected());
    let disconnected = logs.lines_with("disconnected from runtime, reconnecting");
    assert_eq!(disconnected.len(), 1, "{disconnected:?}");
    assert!(disconnected[0].contains("WARN"), "{}", disconnected[0]);
    assert!(
        disconnected[0].contains("retry_in_ms=20"),
        "{}",
        disconnected[0]
    );
    assert!(disconnected[0].contains("error="), "{}", disconnected[0]);
    assert!(!stub_task.is_finished());
    stub_task.abort();
}

#[tokio::test]
async fn stub_rejects_a_bad_plugin_index_without_connecting() {
    let runtime = TestRuntime::new();
    let options = StubOptions {
        plugin_idx: "7".into(),
        ..runtime.options()
    };
    let result = timeout(T, Stub::new(RecordingPlugin::new(), options).run())
        .await
        .unwrap();
    assert!(matches!(
        result,
        Err(super::StubError::InvalidPluginIndex { .. })
    ));
}
