//! What an NRI plugin implements: [`Plugin`], plus the types its methods use.

use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use super::api::{
    Container, ContainerAdjustment, ContainerUpdate, PodSandbox, ValidateContainerAdjustmentRequest,
};
use super::api_level::NriApiLevel;
use super::events::EventMask;

/// What the runtime told the plugin about itself in `Configure`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// `containerd`, for containerd.
    pub name: String,
    /// Such as `v2.1.9`.
    pub version: String,
    /// The NRI API level derived from the above (or announced by NRI >= 0.12).
    pub nri_api: NriApiLevel,
    /// The NRI version the runtime announced (NRI >= 0.12), else empty.
    pub nri_version: String,
    /// Plugin specific configuration from the runtime's NRI config, usually empty.
    pub config: String,
    /// How long the runtime waits for each plugin reply, when it says (NRI >= 0.8).
    pub request_timeout: Option<Duration>,
}

impl RuntimeInfo {
    /// Builds the info from the `Configure` request fields.
    pub fn from_configure(req: &super::api::ConfigureRequest) -> RuntimeInfo {
        let millis = |ms: i64| {
            u64::try_from(ms)
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
        };
        RuntimeInfo {
            name: req.runtime_name.clone(),
            version: req.runtime_version.clone(),
            nri_api: NriApiLevel::detect(&req.runtime_name, &req.runtime_version, &req.nri_version),
            nri_version: req.nri_version.clone(),
            config: req.config.clone(),
            request_timeout: millis(req.request_timeout),
        }
    }
}

/// An error a plugin returns to the runtime.
///
/// From `create_container` it makes container creation fail (how a plugin refuses a
/// container); from `validate_container_adjustment` it rejects the adjustment with this
/// message as the reason.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct PluginError {
    message: String,
}

impl PluginError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> PluginError {
        PluginError {
            message: message.into(),
        }
    }

    /// An error describing `err` and its chain of sources.
    pub fn from_error(err: &(dyn std::error::Error + 'static)) -> PluginError {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        PluginError { message }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Result of a plugin method.
pub type PluginResult<T> = Result<T, PluginError>;

/// An NRI plugin.
///
/// Implement [`Plugin::events`] and the methods of the events listed there; the default
/// methods accept everything and change nothing. The stub only calls methods of
/// subscribed events (and answers the others `UNIMPLEMENTED` itself). Methods may be
/// called concurrently. The runtime waits for every reply (2 s by default, and it holds a
/// node-wide lock during `create_container`), so keep them quick.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The events to subscribe to. Events the runtime's NRI version does not know are
    /// left out automatically.
    fn events(&self) -> EventMask;

    /// The runtime is configuring the plugin (once per connection).
    async fn configure(&self, _runtime: &RuntimeInfo) -> PluginResult<()> {
        Ok(())
    }

    /// Everything that exists in the runtime at connection time, delivered once per
    /// connection (chunks of a split Synchronize are merged first). The updates are
    /// applied to existing containers.
    async fn synchronize(
        &self,
        _pods: Vec<PodSandbox>,
        _containers: Vec<Container>,
    ) -> PluginResult<Vec<ContainerUpdate>> {
        Ok(Vec::new())
    }

    /// The runtime is shutting down.
    async fn shutdown(&self) {}

    /// The connection to the runtime is gone (the stub reconnects by itself afterwards).
    async fn on_disconnect(&self, _reason: &str) {}

    async fn run_pod_sandbox(&self, _pod: &PodSandbox) -> PluginResult<()> {
        Ok(())
    }

    async fn update_pod_sandbox(&self, _pod: &PodSandbox) -> PluginResult<()> {
        Ok(())
    }

    async fn post_update_pod_sandbox(&self, _pod: &PodSandbox) -> PluginResult<()> {
        Ok(())
    }

    async fn stop_pod_sandbox(&self, _pod: &PodSandbox) -> PluginResult<()> {
        Ok(())
    }

    async fn remove_pod_sandbox(&self, _pod: &PodSandbox) -> PluginResult<()> {
        Ok(())
    }

    /// A container is being created: adjust it, and optionally update others. An error
    /// makes the creation fail.
    async fn create_container(
        &self,
        _pod: &PodSandbox,
        _container: &Container,
    ) -> PluginResult<(ContainerAdjustment, Vec<ContainerUpdate>)> {
        Ok((ContainerAdjustment::new(), Vec::new()))
    }

    async fn post_create_container(
        &self,
        _pod: &PodSandbox,
        _container: &Container,
    ) -> PluginResult<()> {
        Ok(())
    }

    async fn start_container(&self, _pod: &PodSandbox, _container: &Container) -> PluginResult<()> {
        Ok(())
    }

    async fn post_start_container(
        &self,
        _pod: &PodSandbox,
        _container: &Container,
    ) -> PluginResult<()> {
        Ok(())
    }

    /// A container's resources are being updated; the result updates containers.
    async fn update_container(
        &self,
        _pod: &PodSandbox,
        _container: &Container,
    ) -> PluginResult<Vec<ContainerUpdate>> {
        Ok(Vec::new())
    }

    async fn post_update_container(
        &self,
        _pod: &PodSandbox,
        _container: &Container,
    ) -> PluginResult<()> {
        Ok(())
    }

    /// A container is stopping; the result updates the remaining containers.
    async fn stop_container(
        &self,
        _pod: &PodSandbox,
        _container: &Container,
    ) -> PluginResult<Vec<ContainerUpdate>> {
        Ok(Vec::new())
    }

    async fn remove_container(
        &self,
        _pod: &PodSandbox,
        _container: &Container,
    ) -> PluginResult<()> {
        Ok(())
    }

    /// The combined adjustment of all plugins for a new container (NRI >= 0.10). An
    /// error rejects it, and the container is not created.
    async fn validate_container_adjustment(
        &self,
        _request: &ValidateContainerAdjustmentRequest,
    ) -> PluginResult<()> {
        Ok(())
    }
}
