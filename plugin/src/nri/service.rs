//! The ttrpc `Plugin` service the runtime calls on conn 1, adapting each call to a
//! [`Plugin`] method.
//!
//! Every method of the generated service trait is implemented here on purpose: the
//! generated defaults answer NOT_FOUND, but NRI (>= 0.12) only falls back to
//! `StateChange` on UNIMPLEMENTED. Events the plugin did not subscribe to are answered
//! UNIMPLEMENTED without calling the plugin.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use rce_guard_proto::nri_ttrpc;
use ttrpc::r#async::TtrpcContext;

use super::api::{
    ConfigureRequest, ConfigureResponse, Container, CreateContainerRequest,
    CreateContainerResponse, Empty, Event, PodSandbox, PostCreateContainerRequest,
    PostCreateContainerResponse, PostStartContainerRequest, PostStartContainerResponse,
    PostUpdateContainerRequest, PostUpdateContainerResponse, PostUpdatePodSandboxRequest,
    PostUpdatePodSandboxResponse, RemoveContainerRequest, RemoveContainerResponse,
    RemovePodSandboxRequest, RemovePodSandboxResponse, RunPodSandboxRequest, RunPodSandboxResponse,
    StartContainerRequest, StartContainerResponse, StateChangeEvent, StopContainerRequest,
    StopContainerResponse, StopPodSandboxRequest, StopPodSandboxResponse, SynchronizeRequest,
    SynchronizeResponse, UpdateContainerRequest, UpdateContainerResponse, UpdatePodSandboxRequest,
    UpdatePodSandboxResponse, ValidateContainerAdjustmentRequest,
    ValidateContainerAdjustmentResponse,
};
use super::api_level::NriApiLevel;
use super::events::EventMask;
use super::plugin::{Plugin, PluginError, RuntimeInfo};

/// The gRPC status code for "method not implemented".
pub const UNIMPLEMENTED: ttrpc::Code = ttrpc::Code::UNIMPLEMENTED;

/// Subscribed instead when the plugin wants nothing the runtime knows, because an empty
/// mask on the wire means "every event". Its handler does nothing by default.
const PLACEHOLDER_EVENT: Event = Event::REMOVE_POD_SANDBOX;

/// The events to answer `Configure` with: what the plugin wants and the runtime knows.
pub fn subscription(wanted: EventMask, level: NriApiLevel) -> EventMask {
    let mask = wanted.intersection(level.known_events());
    if mask.is_empty() {
        EventMask::EMPTY.with(PLACEHOLDER_EVENT)
    } else {
        mask
    }
}

/// Chunks of a split `Synchronize` collected until the last one.
#[derive(Default)]
struct PendingSync {
    pods: Vec<PodSandbox>,
    containers: Vec<Container>,
    chunks: usize,
}

#[derive(Default)]
struct SessionState {
    /// Set by `Configure`; nothing is subscribed before.
    subscribed: EventMask,
    runtime: Option<RuntimeInfo>,
    sync: PendingSync,
}

/// Serves one connection: state is per connection and starts afresh on reconnect.
pub struct PluginService<P: Plugin> {
    plugin: Arc<P>,
    state: Mutex<SessionState>,
}

impl<P: Plugin> PluginService<P> {
    pub fn new(plugin: Arc<P>) -> PluginService<P> {
        PluginService {
            plugin,
            state: Mutex::new(SessionState::default()),
        }
    }

    /// The runtime as it described itself, once configured.
    pub fn runtime(&self) -> Option<RuntimeInfo> {
        self.state().runtime.clone()
    }

    fn state(&self) -> MutexGuard<'_, SessionState> {
        // The state stays consistent even if a holder panicked: every update is one
        // assignment or push.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// UNIMPLEMENTED unless `event` is subscribed.
    fn require(&self, event: Event, method: &str) -> ttrpc::Result<()> {
        if self.state().subscribed.contains(event) {
            Ok(())
        } else {
            Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                UNIMPLEMENTED,
                format!("{method}: event {event:?} is not subscribed by this plugin"),
            )))
        }
    }
}

impl From<PluginError> for ttrpc::Error {
    /// Plugin errors travel as gRPC UNKNOWN, like any plain error from a Go plugin.
    fn from(err: PluginError) -> ttrpc::Error {
        ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::UNKNOWN, err.message()))
    }
}

#[async_trait]
impl<P: Plugin> nri_ttrpc::Plugin for PluginService<P> {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: ConfigureRequest,
    ) -> ttrpc::Result<ConfigureResponse> {
        let runtime = RuntimeInfo::from_configure(&req);
        self.plugin.configure(&runtime).await?;
        let wanted = self.plugin.events();
        let events = subscription(wanted, runtime.nri_api);
        let unknown = wanted.difference(runtime.nri_api.known_events());
        if !unknown.is_empty() {
            tracing::warn!(
                nri_api = %runtime.nri_api,
                events = %unknown,
                "runtime does not know these events, not subscribing to them"
            );
        }
        tracing::info!(
            runtime_name = %runtime.name,
            runtime_version = %runtime.version,
            nri_api = %runtime.nri_api,
            events = %events,
            "registered with runtime"
        );
        let mut state = self.state();
        state.subscribed = events;
        state.runtime = Some(runtime);
        state.sync = PendingSync::default();
        Ok(ConfigureResponse {
            // At most 14 bits are ever set, so this never changes the value.
            events: events.bits() as i32,
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _ctx: &TtrpcContext,
        req: SynchronizeRequest,
    ) -> ttrpc::Result<SynchronizeResponse> {
        let (pods, containers, chunks) = {
            let mut state = self.state();
            let sync = &mut state.sync;
            sync.pods.extend(req.pods);
            sync.containers.extend(req.containers);
            sync.chunks += 1;
            if req.more {
                // The runtime drops plugins that answer a partial chunk with updates or
                // without echoing `more`.
                return Ok(SynchronizeResponse {
                    more: true,
                    ..Default::default()
                });
            }
            let sync = std::mem::take(sync);
            (sync.pods, sync.containers, sync.chunks)
        };
        let (pod_count, container_count) = (pods.len(), containers.len());
        let update = self.plugin.synchronize(pods, containers).await?;
        tracing::info!(
            pods = pod_count,
            containers = container_count,
            chunks,
            "synchronized"
        );
        Ok(SynchronizeResponse {
            update,
            more: false,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Empty> {
        tracing::info!("runtime is shutting down");
        self.plugin.shutdown().await;
        Ok(Empty::new())
    }

    async fn run_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: RunPodSandboxRequest,
    ) -> ttrpc::Result<RunPodSandboxResponse> {
        self.require(Event::RUN_POD_SANDBOX, "RunPodSandbox")?;
        self.plugin
            .run_pod_sandbox(req.pod.get_or_default())
            .await?;
        Ok(RunPodSandboxResponse::new())
    }

    async fn update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: UpdatePodSandboxRequest,
    ) -> ttrpc::Result<UpdatePodSandboxResponse> {
        self.require(Event::UPDATE_POD_SANDBOX, "UpdatePodSandbox")?;
        self.plugin
            .update_pod_sandbox(req.pod.get_or_default())
            .await?;
        Ok(UpdatePodSandboxResponse::new())
    }

    async fn post_update_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: PostUpdatePodSandboxRequest,
    ) -> ttrpc::Result<PostUpdatePodSandboxResponse> {
        self.require(Event::POST_UPDATE_POD_SANDBOX, "PostUpdatePodSandbox")?;
        self.plugin
            .post_update_pod_sandbox(req.pod.get_or_default())
            .await?;
        Ok(PostUpdatePodSandboxResponse::new())
    }

    async fn stop_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: StopPodSandboxRequest,
    ) -> ttrpc::Result<StopPodSandboxResponse> {
        self.require(Event::STOP_POD_SANDBOX, "StopPodSandbox")?;
        self.plugin
            .stop_pod_sandbox(req.pod.get_or_default())
            .await?;
        Ok(StopPodSandboxResponse::new())
    }

    async fn remove_pod_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: RemovePodSandboxRequest,
    ) -> ttrpc::Result<RemovePodSandboxResponse> {
        self.require(Event::REMOVE_POD_SANDBOX, "RemovePodSandbox")?;
        self.plugin
            .remove_pod_sandbox(req.pod.get_or_default())
            .await?;
        Ok(RemovePodSandboxResponse::new())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        self.require(Event::CREATE_CONTAINER, "CreateContainer")?;
        let (adjust, update) = self
            .plugin
            .create_container(req.pod.get_or_default(), req.container.get_or_default())
            .await?;
        Ok(CreateContainerResponse {
            adjust: Some(adjust).into(),
            update,
            ..Default::default()
        })
    }

    async fn post_create_container(
        &self,
        _ctx: &TtrpcContext,
        req: PostCreateContainerRequest,
    ) -> ttrpc::Result<PostCreateContainerResponse> {
        self.require(Event::POST_CREATE_CONTAINER, "PostCreateContainer")?;
        self.plugin
            .post_create_container(req.pod.get_or_default(), req.container.get_or_default())
            .await?;
        Ok(PostCreateContainerResponse::new())
    }

    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        self.require(Event::START_CONTAINER, "StartContainer")?;
        self.plugin
            .start_container(req.pod.get_or_default(), req.container.get_or_default())
            .await?;
        Ok(StartContainerResponse::new())
    }

    async fn post_start_container(
        &self,
        _ctx: &TtrpcContext,
        req: PostStartContainerRequest,
    ) -> ttrpc::Result<PostStartContainerResponse> {
        self.require(Event::POST_START_CONTAINER, "PostStartContainer")?;
        self.plugin
            .post_start_container(req.pod.get_or_default(), req.container.get_or_default())
            .await?;
        Ok(PostStartContainerResponse::new())
    }

    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<UpdateContainerResponse> {
        self.require(Event::UPDATE_CONTAINER, "UpdateContainer")?;
        let update = self
            .plugin
            .update_container(req.pod.get_or_default(), req.container.get_or_default())
            .await?;
        Ok(UpdateContainerResponse {
            update,
            ..Default::default()
        })
    }

    async fn post_update_container(
        &self,
        _ctx: &TtrpcContext,
        req: PostUpdateContainerRequest,
    ) -> ttrpc::Result<PostUpdateContainerResponse> {
        self.require(Event::POST_UPDATE_CONTAINER, "PostUpdateContainer")?;
        self.plugin
            .post_update_container(req.pod.get_or_default(), req.container.get_or_default())
            .await?;
        Ok(PostUpdateContainerResponse::new())
    }

    async fn stop_container(
        &self,
        _ctx: &TtrpcContext,
        req: StopContainerRequest,
    ) -> ttrpc::Result<StopContainerResponse> {
        self.require(Event::STOP_CONTAINER, "StopContainer")?;
        let update = self
            .plugin
            .stop_container(req.pod.get_or_default(), req.container.get_or_default())
            .await?;
        Ok(StopContainerResponse {
            update,
            ..Default::default()
        })
    }

    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<RemoveContainerResponse> {
        self.require(Event::REMOVE_CONTAINER, "RemoveContainer")?;
        self.plugin
            .remove_container(req.pod.get_or_default(), req.container.get_or_default())
            .await?;
        Ok(RemoveContainerResponse::new())
    }

    async fn state_change(
        &self,
        _ctx: &TtrpcContext,
        req: StateChangeEvent,
    ) -> ttrpc::Result<Empty> {
        let event = match req.event.enum_value() {
            Ok(event) => event,
            Err(value) => {
                tracing::warn!(event = value, "ignoring StateChange with an unknown event");
                return Ok(Empty::new());
            }
        };
        if !self.state().subscribed.contains(event) {
            tracing::debug!(?event, "ignoring StateChange for an unsubscribed event");
            return Ok(Empty::new());
        }
        let pod = req.pod.get_or_default();
        let container = req.container.get_or_default();
        let plugin = &self.plugin;
        match event {
            Event::RUN_POD_SANDBOX => plugin.run_pod_sandbox(pod).await?,
            Event::STOP_POD_SANDBOX => plugin.stop_pod_sandbox(pod).await?,
            Event::REMOVE_POD_SANDBOX => plugin.remove_pod_sandbox(pod).await?,
            Event::UPDATE_POD_SANDBOX => plugin.update_pod_sandbox(pod).await?,
            Event::POST_UPDATE_POD_SANDBOX => plugin.post_update_pod_sandbox(pod).await?,
            Event::POST_CREATE_CONTAINER => plugin.post_create_container(pod, container).await?,
            Event::START_CONTAINER => plugin.start_container(pod, container).await?,
            Event::POST_START_CONTAINER => plugin.post_start_container(pod, container).await?,
            Event::POST_UPDATE_CONTAINER => plugin.post_update_container(pod, container).await?,
            Event::REMOVE_CONTAINER => plugin.remove_container(pod, container).await?,
            Event::STOP_CONTAINER => {
                let update = plugin.stop_container(pod, container).await?;
                if !update.is_empty() {
                    tracing::warn!(
                        count = update.len(),
                        "container updates from a StopContainer delivered via StateChange are dropped"
                    );
                }
            }
            // These carry replies and always have their own RPC; a StateChange for them
            // cannot transport the reply.
            Event::CREATE_CONTAINER
            | Event::UPDATE_CONTAINER
            | Event::VALIDATE_CONTAINER_ADJUSTMENT
            | Event::UNKNOWN
            | Event::LAST => {
                tracing::warn!(
                    ?event,
                    "ignoring StateChange for an event that needs its own RPC"
                );
            }
        }
        Ok(Empty::new())
    }

    async fn validate_container_adjustment(
        &self,
        _ctx: &TtrpcContext,
        req: ValidateContainerAdjustmentRequest,
    ) -> ttrpc::Result<ValidateContainerAdjustmentResponse> {
        self.require(
            Event::VALIDATE_CONTAINER_ADJUSTMENT,
            "ValidateContainerAdjustment",
        )?;
        Ok(
            match self.plugin.validate_container_adjustment(&req).await {
                Ok(()) => ValidateContainerAdjustmentResponse::new(),
                Err(reason) => ValidateContainerAdjustmentResponse {
                    reject: true,
                    reason: reason.message().to_owned(),
                    ..Default::default()
                },
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_for_a_0_8_runtime_has_no_unknown_bits() {
        let wanted = EventMask::of(&[
            Event::CREATE_CONTAINER,
            Event::REMOVE_CONTAINER,
            Event::VALIDATE_CONTAINER_ADJUSTMENT,
            Event::UPDATE_POD_SANDBOX,
        ]);
        let mask = subscription(wanted, NriApiLevel::V0_8);
        assert_eq!(
            mask,
            EventMask::of(&[Event::CREATE_CONTAINER, Event::REMOVE_CONTAINER])
        );
        assert_eq!(mask.bits() & !0x7ff, 0, "bits above REMOVE_CONTAINER");
        assert_eq!(subscription(wanted, NriApiLevel::V0_10), wanted);
    }

    #[test]
    fn an_empty_subscription_is_never_sent_as_zero() {
        let only_validation = EventMask::of(&[Event::VALIDATE_CONTAINER_ADJUSTMENT]);
        let mask = subscription(only_validation, NriApiLevel::V0_6);
        assert_ne!(mask.bits(), 0, "0 would subscribe to every event");
        assert_eq!(mask, EventMask::of(&[PLACEHOLDER_EVENT]));
        assert_ne!(subscription(EventMask::EMPTY, NriApiLevel::V0_12).bits(), 0);
    }

    #[test]
    fn plugin_errors_become_status_unknown() {
        let err: ttrpc::Error = PluginError::new("refused").into();
        match err {
            ttrpc::Error::RpcStatus(status) => {
                assert_eq!(status.code(), ttrpc::Code::UNKNOWN);
                assert_eq!(status.message(), "refused");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
