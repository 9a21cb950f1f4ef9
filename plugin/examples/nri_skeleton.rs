//! A minimal, complete NRI plugin built on rce-guard's stub: it logs the pod and container
//! events it subscribes to and changes nothing except one annotation.
//!
//! Run it next to containerd with NRI enabled:
//!
//! ```text
//! cargo run -p rce-guard --example nri_skeleton -- /var/run/nri/nri.sock
//! ```
//!
//! Or install it as `/opt/nri/plugins/90-skeleton` and let containerd launch it (the stub
//! then uses the connection containerd passes on fd 3 and the name/index it sets).

use std::sync::Arc;

use async_trait::async_trait;
use rce_guard::nri::api::{Container, ContainerAdjustment, ContainerUpdate, Event, PodSandbox};
use rce_guard::nri::{EventMask, Plugin, PluginResult, RuntimeInfo, Stub, StubOptions};

struct Skeleton;

#[async_trait]
impl Plugin for Skeleton {
    fn events(&self) -> EventMask {
        // The stub leaves out whatever the connected runtime's NRI version does not know.
        EventMask::of(&[
            Event::RUN_POD_SANDBOX,
            Event::STOP_POD_SANDBOX,
            Event::CREATE_CONTAINER,
            Event::START_CONTAINER,
            Event::REMOVE_CONTAINER,
        ])
    }

    async fn configure(&self, runtime: &RuntimeInfo) -> PluginResult<()> {
        tracing::info!(
            runtime = %runtime.name,
            version = %runtime.version,
            nri_api = %runtime.nri_api,
            seccomp_adjustment = runtime.nri_api.supports_seccomp_adjustment(),
            "configured"
        );
        Ok(())
    }

    async fn synchronize(
        &self,
        pods: Vec<PodSandbox>,
        containers: Vec<Container>,
    ) -> PluginResult<Vec<ContainerUpdate>> {
        for pod in &pods {
            tracing::info!(pod = %pod.name, namespace = %pod.namespace, "existing pod");
        }
        for container in &containers {
            tracing::info!(container = %container.name, id = %container.id, "existing container");
        }
        Ok(Vec::new())
    }

    async fn run_pod_sandbox(&self, pod: &PodSandbox) -> PluginResult<()> {
        tracing::info!(pod = %pod.name, namespace = %pod.namespace, "pod started");
        Ok(())
    }

    async fn stop_pod_sandbox(&self, pod: &PodSandbox) -> PluginResult<()> {
        tracing::info!(pod = %pod.name, "pod stopped");
        Ok(())
    }

    async fn create_container(
        &self,
        pod: &PodSandbox,
        container: &Container,
    ) -> PluginResult<(ContainerAdjustment, Vec<ContainerUpdate>)> {
        tracing::info!(pod = %pod.name, container = %container.name, "container created");
        let mut adjust = ContainerAdjustment::new();
        adjust
            .annotations
            .insert("nri-skeleton.example/seen".into(), "true".into());
        Ok((adjust, Vec::new()))
    }

    async fn start_container(&self, pod: &PodSandbox, container: &Container) -> PluginResult<()> {
        tracing::info!(pod = %pod.name, container = %container.name, pid = container.pid, "container started");
        Ok(())
    }

    async fn remove_container(&self, _pod: &PodSandbox, container: &Container) -> PluginResult<()> {
        tracing::info!(container = %container.name, "container removed");
        Ok(())
    }

    async fn on_disconnect(&self, reason: &str) {
        tracing::warn!(%reason, "lost the runtime; the stub reconnects by itself");
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt().init();
    let mut options = StubOptions {
        plugin_name: "skeleton".into(),
        plugin_idx: "90".into(),
        ..StubOptions::default()
    };
    if let Some(socket) = std::env::args_os().nth(1) {
        options.socket_path = socket.into();
    }
    // `run` only returns on a configuration error (or when a launched plugin loses its
    // one connection).
    match Stub::new(Arc::new(Skeleton), options).run().await {
        Ok(never) => match never {},
        Err(err) => {
            tracing::error!(error = %err, "NRI stub stopped");
            std::process::exit(1);
        }
    }
}
