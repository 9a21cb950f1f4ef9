//! The NRI stub: connects to the runtime, serves a [`Plugin`] and keeps it registered.
//!
//! Per connection: split the socket with the [`Mux`], serve the ttrpc `Plugin` service on
//! conn 1 first, then call `RegisterPlugin` on conn 2; the runtime then calls
//! `Configure`, `Synchronize` and the subscribed events. When the connection drops (the
//! runtime restarted) the stub tells the plugin, waits with exponential backoff and
//! registers again; the runtime re-synchronizes the plugin itself.

use std::convert::Infallible;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream;
use rce_guard_proto::nri_ttrpc::{self, RuntimeClient};
use thiserror::Error;
use tokio::net::UnixStream;
use ttrpc::asynchronous::transport::{Listener, Socket};

use super::api::{
    ContainerEviction, ContainerUpdate, RegisterPluginRequest, UpdateContainersRequest,
};
use super::launch::{take_inherited_socket, ENV_PLUGIN_IDX, ENV_PLUGIN_NAME, ENV_PLUGIN_SOCKET};
use super::mux::{Mux, MuxError, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use super::plugin::Plugin;
use super::service::PluginService;

/// The NRI API version our protocol definition matches, sent in `RegisterPlugin`
/// (NRI >= 0.12 runtimes log it; older ones ignore the field).
pub const PLUGIN_NRI_VERSION: &str = "v0.12.0";

/// Errors of the stub.
#[derive(Debug, Error)]
pub enum StubError {
    #[error("invalid NRI plugin name {name:?}: use 1 or more of A-Z a-z 0-9 _ . + -")]
    InvalidPluginName { name: String },
    #[error("invalid NRI plugin index {idx:?}: must be exactly two digits")]
    InvalidPluginIndex { idx: String },
    #[error("{ENV_PLUGIN_SOCKET}={value:?} is not a descriptor number")]
    InvalidLaunchSocket { value: String },
    #[error("cannot take over the runtime connection on descriptor {fd}")]
    InheritSocket {
        fd: i32,
        #[source]
        source: io::Error,
    },
    #[error("the runtime closed the connection it launched this plugin with ({reason}); a launched plugin cannot reconnect")]
    LaunchedConnectionClosed { reason: String },
    #[error("cannot connect to the NRI socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Mux(#[from] MuxError),
    #[error("starting the ttrpc plugin service failed")]
    ServeStart(#[source] ttrpc::Error),
    #[error("{call} failed")]
    Rpc {
        call: &'static str,
        #[source]
        source: ttrpc::Error,
    },
    #[error("not connected to the runtime")]
    NotConnected,
}

/// How to reach the runtime and how to present the plugin.
#[derive(Clone, Debug)]
pub struct StubOptions {
    /// Plugin name, `[A-Za-z0-9_.+-]+`.
    pub plugin_name: String,
    /// Two digits; plugins are called in ascending index order.
    pub plugin_idx: String,
    /// The runtime's NRI socket.
    pub socket_path: PathBuf,
    /// First wait before reconnecting.
    pub reconnect_min: Duration,
    /// Longest wait before reconnecting.
    pub reconnect_max: Duration,
    /// How long to wait for the reply to `RegisterPlugin`.
    pub registration_timeout: Duration,
    /// Honour `NRI_PLUGIN_SOCKET`, `NRI_PLUGIN_NAME` and `NRI_PLUGIN_IDX`, which a runtime
    /// sets when it launched the plugin itself (name and index then override the above).
    pub use_launch_env: bool,
}

impl Default for StubOptions {
    fn default() -> Self {
        StubOptions {
            plugin_name: "rce-guard".to_owned(),
            plugin_idx: "10".to_owned(),
            socket_path: PathBuf::from("/var/run/nri/nri.sock"),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            registration_timeout: Duration::from_secs(5),
            use_launch_env: true,
        }
    }
}

/// Checks a plugin name the way the runtime will.
pub fn validate_plugin_name(name: &str) -> Result<(), StubError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StubError::InvalidPluginName {
            name: name.to_owned(),
        })
    }
}

/// Checks a plugin index the way the runtime will.
pub fn validate_plugin_idx(idx: &str) -> Result<(), StubError> {
    if idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(StubError::InvalidPluginIndex {
            idx: idx.to_owned(),
        })
    }
}

/// A handle for calls the plugin makes to the runtime on its own initiative.
#[derive(Clone, Default)]
pub struct RuntimeHandle {
    client: Arc<Mutex<Option<RuntimeClient>>>,
}

impl RuntimeHandle {
    /// Whether the plugin is currently registered with a runtime.
    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// Asks the runtime to update and evict containers; returns the updates that failed.
    ///
    /// Do not await this from inside a plugin method: the runtime may hold locks while it
    /// waits for that method's reply.
    pub async fn update_containers(
        &self,
        update: Vec<ContainerUpdate>,
        evict: Vec<ContainerEviction>,
        timeout: Duration,
    ) -> Result<Vec<ContainerUpdate>, StubError> {
        let client = self.current().ok_or(StubError::NotConnected)?;
        let req = UpdateContainersRequest {
            update,
            evict,
            ..Default::default()
        };
        let reply = client
            .update_containers(ttrpc::context::with_duration(timeout), &req)
            .await
            .map_err(|source| StubError::Rpc {
                call: "UpdateContainers",
                source,
            })?;
        Ok(reply.failed)
    }

    fn current(&self) -> Option<RuntimeClient> {
        self.slot().clone()
    }

    fn set(&self, client: Option<RuntimeClient>) {
        *self.slot() = client;
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<RuntimeClient>> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where connections come from.
enum Endpoint {
    Dial(PathBuf),
    /// The connection the runtime launched us with; usable once.
    Launched(Option<UnixStream>),
}

/// How one connection ended.
struct SessionEnd {
    /// The runtime configured the plugin before the connection ended.
    configured: bool,
    reason: String,
}

/// Runs a [`Plugin`] against the runtime.
pub struct Stub<P: Plugin> {
    plugin: Arc<P>,
    options: StubOptions,
    runtime: RuntimeHandle,
}

impl<P: Plugin> Stub<P> {
    pub fn new(plugin: Arc<P>, options: StubOptions) -> Stub<P> {
        Stub {
            plugin,
            options,
            runtime: RuntimeHandle::default(),
        }
    }

    /// A handle for `UpdateContainers`, usable while the stub runs.
    pub fn runtime_handle(&self) -> RuntimeHandle {
        self.runtime.clone()
    }

    /// Serves the plugin for as long as the process lives, reconnecting after every
    /// disconnect. Returns only on a configuration error (bad name, index or launch
    /// descriptor), or when a runtime-launched plugin loses its one connection.
    pub async fn run(mut self) -> Result<Infallible, StubError> {
        let mut endpoint = self.resolve_endpoint()?;
        validate_plugin_name(&self.options.plugin_name)?;
        validate_plugin_idx(&self.options.plugin_idx)?;

        let mut delay = self.options.reconnect_min;
        loop {
            let stream = match &mut endpoint {
                Endpoint::Launched(slot) => {
                    slot.take()
                        .ok_or_else(|| StubError::LaunchedConnectionClosed {
                            reason: "the connection was already used".to_owned(),
                        })?
                }
                Endpoint::Dial(path) => match UnixStream::connect(&*path).await {
                    Ok(stream) => stream,
                    Err(source) => {
                        let err = StubError::Connect {
                            path: path.clone(),
                            source,
                        };
                        tracing::warn!(
                            error = %error_chain(&err),
                            retry_in_ms = delay.as_millis() as u64,
                            "cannot connect to runtime, retrying"
                        );
                        tokio::time::sleep(delay).await;
                        delay = self.next_delay(delay);
                        continue;
                    }
                },
            };

            let end = self.session(stream).await;
            self.runtime.set(None);
            if end.configured {
                delay = self.options.reconnect_min;
            }
            if matches!(endpoint, Endpoint::Launched(_)) {
                tracing::warn!(error = %end.reason, "disconnected from runtime");
                self.plugin.on_disconnect(&end.reason).await;
                return Err(StubError::LaunchedConnectionClosed { reason: end.reason });
            }
            tracing::warn!(
                error = %end.reason,
                retry_in_ms = delay.as_millis() as u64,
                "disconnected from runtime, reconnecting"
            );
            self.plugin.on_disconnect(&end.reason).await;
            tokio::time::sleep(delay).await;
            delay = self.next_delay(delay);
        }
    }

    fn next_delay(&self, delay: Duration) -> Duration {
        delay
            .saturating_mul(2)
            .min(self.options.reconnect_max)
            .max(self.options.reconnect_min)
    }

    /// Applies the launch environment, if any, and picks the endpoint.
    fn resolve_endpoint(&mut self) -> Result<Endpoint, StubError> {
        if self.options.use_launch_env {
            if let Ok(value) = std::env::var(ENV_PLUGIN_SOCKET) {
                if let Ok(name) = std::env::var(ENV_PLUGIN_NAME) {
                    self.options.plugin_name = name;
                }
                if let Ok(idx) = std::env::var(ENV_PLUGIN_IDX) {
                    self.options.plugin_idx = idx;
                }
                let stream = take_inherited_socket(&value)?;
                tracing::info!(fd = %value, "using the connection the runtime launched us with");
                return Ok(Endpoint::Launched(Some(stream)));
            }
        }
        Ok(Endpoint::Dial(self.options.socket_path.clone()))
    }

    /// Serves one connection until it ends.
    async fn session(&self, stream: UnixStream) -> SessionEnd {
        let service = Arc::new(PluginService::new(self.plugin.clone()));
        let result = self.serve_connection(stream, service.clone()).await;
        SessionEnd {
            configured: service.runtime().is_some(),
            reason: match result {
                Ok(()) => "runtime closed the connection".to_owned(),
                Err(err) => error_chain(&err),
            },
        }
    }

    async fn serve_connection(
        &self,
        stream: UnixStream,
        service: Arc<PluginService<P>>,
    ) -> Result<(), StubError> {
        let (mut mux, [plugin_conn, runtime_conn]) =
            Mux::start(stream, [PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN])?;

        // Conn 1: our service, up before we register. The server must stay alive for the
        // whole connection (dropping it closes its connections).
        let listener = Listener::new(stream::once(async move { Ok::<_, io::Error>(plugin_conn) }));
        let mut server = ttrpc::asynchronous::Server::new()
            .add_listener(listener)
            .register_service(nri_ttrpc::create_plugin(service));
        server.start().await.map_err(StubError::ServeStart)?;

        // Conn 2: register with the runtime.
        let client =
            RuntimeClient::new(ttrpc::asynchronous::Client::new(Socket::new(runtime_conn)));
        let request = RegisterPluginRequest {
            plugin_name: self.options.plugin_name.clone(),
            plugin_idx: self.options.plugin_idx.clone(),
            nri_version: PLUGIN_NRI_VERSION.to_owned(),
            ..Default::default()
        };
        let ctx = ttrpc::context::with_duration(self.options.registration_timeout);
        tokio::select! {
            registered = client.register_plugin(ctx, &request) => {
                registered.map_err(|source| StubError::Rpc { call: "RegisterPlugin", source })?;
            }
            closed = mux.closed() => return closed.map_err(StubError::from),
        }
        tracing::debug!(
            plugin_name = %self.options.plugin_name,
            plugin_idx = %self.options.plugin_idx,
            "RegisterPlugin accepted"
        );
        self.runtime.set(Some(client));

        let closed = mux.closed().await;
        drop(server);
        closed.map_err(StubError::from)
    }
}

/// `err: cause: cause` on one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_and_indexes_are_validated() {
        validate_plugin_name("rce-guard").unwrap();
        validate_plugin_name("a_b.c+d-1").unwrap();
        for bad in ["", "rce guard", "rce/guard", "ünï"] {
            assert!(validate_plugin_name(bad).is_err(), "{bad:?}");
        }
        validate_plugin_idx("10").unwrap();
        validate_plugin_idx("00").unwrap();
        for bad in ["", "1", "100", "1a", "+1", "١٠"] {
            assert!(validate_plugin_idx(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let o = StubOptions::default();
        assert_eq!(o.plugin_name, "rce-guard");
        assert_eq!(o.plugin_idx, "10");
        assert_eq!(o.socket_path, PathBuf::from("/var/run/nri/nri.sock"));
        assert!(o.reconnect_min <= o.reconnect_max);
    }
}
