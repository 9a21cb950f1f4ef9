//! `rce-guard run`: wires the parts together and keeps them running.
//!
//! NRI stub (tokio) -> registry <- judge <- monitor threads (seccomp notify) -> finding
//! pipeline thread -> sinks; plus the admin socket and the coverage check.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::cli::RunArgs;
use crate::config::Config;
use crate::finding::NodeContext;
use crate::holder_link::{self, HolderPaths, HolderState};
use crate::judge::Judge;
use crate::monitor::{self, MonitorConfig, MonitorHandle};
use crate::nri::{Stub, StubOptions};
use crate::nri_handler::AgentPlugin;
use crate::policy::NotifyListener;
use crate::registry::{ContainerState, Injection, Registry};
use crate::rule::Rule;
use crate::sinks::{FileSink, FindingPipeline, Sink, StdoutSink};

/// `listenerMetadata` of our rule: tells the monitor the fd came from our own policy.
pub const LISTENER_METADATA: &str = "rce-guard/v1";

/// Applies command-line overrides to the loaded config.
pub fn effective_config(args: &RunArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(p) = &args.nri_socket {
        cfg.nri.socket = p.clone();
    }
    if let Some(p) = &args.listener {
        cfg.monitor.listener = p.clone();
    }
    if args.no_holder {
        cfg.monitor.holder = false;
    }
    if let Some(p) = &args.holder_socket {
        cfg.monitor.holder_socket = p.clone();
    }
    if let Some(p) = &args.admin_socket {
        cfg.admin.socket = p.clone();
    }
    if let Some(m) = args.mode {
        cfg.monitor.mode = m;
    }
    if let Some(n) = &args.node_name {
        cfg.node.name = n.clone();
    }
    if let Some(f) = &args.findings_file {
        cfg.sinks.file = Some(f.clone());
    }
    cfg.validate()?;
    Ok(cfg)
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = effective_config(&args)?;
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("rce-guard run must run as root (it receives seccomp listener fds and reads other processes' fds)");
    }
    let node = NodeContext {
        node_name: cfg.node_name(),
        cluster_resource_name: cfg.node.cluster_resource_name.clone(),
        project_display_name: cfg.node.project_display_name.clone(),
    };

    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if cfg.sinks.stdout {
        sinks.push(Box::new(StdoutSink));
    }
    if let Some(path) = &cfg.sinks.file {
        let f = FileSink::open(path, cfg.sinks.file_max_bytes, cfg.sinks.file_keep)
            .with_context(|| format!("cannot open findings file {}", path.display()))?;
        sinks.push(Box::new(f));
    }
    let (findings, _sink_thread) = FindingPipeline::start(
        sinks,
        node.clone(),
        cfg.sinks.queue,
        Duration::from_secs(cfg.rule.dedup_window_secs),
    );

    let registry = Arc::new(Registry::new());
    let rule = Rule::new(&cfg.rule, &cfg.monitor).context("invalid rule")?;
    let judge = Arc::new(Judge::new(rule, registry.clone(), findings.clone()));

    // With the holder, runc hands fds to the holder, which forwards them to us; without it we
    // serve the listener socket ourselves.
    let monitor_cfg = MonitorConfig {
        listener_path: if cfg.monitor.holder {
            PathBuf::new()
        } else {
            cfg.monitor.listener.clone()
        },
        workers: cfg.monitor.workers,
        ..MonitorConfig::default()
    };
    let monitor = Arc::new(monitor::start(monitor_cfg, judge).with_context(|| {
        format!(
            "cannot start the monitor on {}",
            cfg.monitor.listener.display()
        )
    })?);
    let holder_state = Arc::new(HolderState::default());
    if cfg.monitor.holder {
        let paths = HolderPaths {
            listener: cfg.monitor.listener.clone(),
            control: cfg.monitor.holder_socket.clone(),
            json_logs: args.log_format == crate::cli::LogFormat::Json,
            start_holder: cfg.monitor.start_holder,
            when_replaced: cfg.monitor.when_replaced,
        };
        let link = holder_link::connect_or_spawn(&paths)?;
        let (m, st) = (monitor.clone(), holder_state.clone());
        std::thread::Builder::new()
            .name("rce-guard-holder-link".into())
            .spawn(move || holder_link::run(link, paths, m, st))
            .context("cannot start the holder link thread")?;
    } else {
        tracing::warn!("running without the fd holder: if this agent dies, every exec in the containers it watches fails with ENOSYS");
    }

    let listener = NotifyListener::new(cfg.monitor.listener.to_string_lossy(), LISTENER_METADATA)
        .context("monitor.listener cannot be used as a seccomp listenerPath")?;
    let plugin = Arc::new(AgentPlugin::new(
        registry.clone(),
        cfg.injection.clone(),
        listener,
    ));

    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        mode = %cfg.monitor.mode,
        listener = %cfg.monitor.listener.display(),
        nri_socket = %cfg.nri.socket.display(),
        node = %node.node_name,
        "rce-guard starting"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rce-guard-nri")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    rt.block_on(async move {
        let coverage_errors = Arc::new(AtomicU64::new(0));
        let admin_listener = crate::admin::bind(&cfg.admin.socket)?;
        let status = status_fn(&cfg, registry.clone(), monitor.clone(), plugin.clone(), findings.clone(), coverage_errors.clone(), holder_state.clone());
        tokio::spawn(crate::admin::serve(admin_listener, status));
        tokio::spawn(coverage_check(
            registry.clone(),
            monitor.clone(),
            Duration::from_secs(cfg.injection.coverage_grace_secs),
            coverage_errors,
        ));

        if !args.no_nri {
            let opts = StubOptions {
                plugin_name: cfg.nri.plugin_name.clone(),
                plugin_idx: cfg.nri.plugin_index.clone(),
                socket_path: cfg.nri.socket.clone(),
                ..StubOptions::default()
            };
            let stub = Stub::new(plugin.clone(), opts);
            tokio::spawn(async move {
                // run() only returns on a configuration error; it reconnects by itself.
                let Err(e) = stub.run().await;
                tracing::error!(error = %e, "NRI plugin stopped; no new containers will be injected");
            });
        }

        wait_for_termination().await;
        let watched = monitor.watched().len();
        if cfg.monitor.holder {
            tracing::info!(watched_containers = watched, "rce-guard stopping; the fd holder keeps every listener fd, execs wait for the next agent");
        } else {
            tracing::warn!(
                watched_containers = watched,
                "rce-guard stopping without a holder: execs in watched containers fail with ENOSYS from now on"
            );
        }
        anyhow::Ok(())
    })
}

async fn wait_for_termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Every container we asked to monitor must have handed us a listener fd shortly after it
/// started; if not, its runtime dropped our rule (NRI < 0.10 without the wrapper, a wrapper that
/// is not installed, ...). Each such container is logged once as an ERROR and counted.
async fn coverage_check(
    registry: Arc<Registry>,
    monitor: Arc<MonitorHandle>,
    grace: Duration,
    errors: Arc<AtomicU64>,
) {
    let mut reported = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let watched: std::collections::HashSet<String> = monitor
            .watched()
            .into_iter()
            .map(|w| w.container_id)
            .collect();
        let now = SystemTime::now();
        for c in registry.containers() {
            let id = &c.identity.container_id;
            let overdue = c.state == ContainerState::Running
                && c.injection == Injection::Requested
                && c.started_at
                    .is_some_and(|t| now.duration_since(t).unwrap_or_default() > grace);
            if overdue && !watched.contains(id) && reported.insert(id.clone()) {
                errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    container_id = %id,
                    pod_namespace = %c.identity.pod_namespace,
                    pod_name = %c.identity.pod_name,
                    container_name = %c.identity.container_name,
                    grace_secs = grace.as_secs(),
                    "container is NOT monitored: its listener fd never arrived (is the rce-guard-runc wrapper installed as containerd's runc BinaryName?)"
                );
            }
        }
        reported.retain(|id| registry.container(id).is_some());
    }
}

fn status_fn(
    cfg: &Config,
    registry: Arc<Registry>,
    monitor: Arc<MonitorHandle>,
    plugin: Arc<AgentPlugin>,
    findings: FindingPipeline,
    coverage_errors: Arc<AtomicU64>,
    holder: Arc<HolderState>,
) -> crate::admin::StatusFn {
    let holder_enabled = cfg.monitor.holder;
    let mode = cfg.monitor.mode.to_string();
    let node = cfg.node_name();
    Arc::new(move || {
        let watched: std::collections::HashMap<String, usize> = monitor
            .watched()
            .into_iter()
            .map(|w| (w.container_id, w.listener_fds))
            .collect();
        let containers: Vec<serde_json::Value> = registry
            .containers()
            .into_iter()
            .map(|c| {
                let fds = watched.get(&c.identity.container_id).copied().unwrap_or(0);
                let note = match &c.injection {
                    Injection::Skipped(r) => r.clone(),
                    Injection::NotDecided if fds == 0 => {
                        "created before the agent: cannot be injected after the fact".into()
                    }
                    Injection::Requested if fds == 0 && c.state == ContainerState::Running => {
                        "listener fd missing".into()
                    }
                    _ => String::new(),
                };
                serde_json::json!({
                    "container_id": c.identity.container_id,
                    "container_name": c.identity.container_name,
                    "pod_name": c.identity.pod_name,
                    "pod_namespace": c.identity.pod_namespace,
                    "image": c.identity.image,
                    "state": format!("{:?}", c.state).to_lowercase(),
                    "injection": c.injection,
                    "monitored": fds > 0,
                    "listener_fds": fds,
                    "note": note,
                })
            })
            .collect();
        let (n, p50, p99, max) = plugin.create_latency.summary();
        serde_json::json!({
            "agent": {
                "version": env!("CARGO_PKG_VERSION"),
                "mode": mode,
                "node": node,
                "nri": plugin.runtime().map(|r| format!("{} {} ({:?})", r.name, r.version, r.nri_api)).unwrap_or_else(|| "not connected".into()),
            },
            "containers": containers,
            "monitor": monitor.stats(),
            "findings": findings.stats(),
            "coverage_errors": coverage_errors.load(Ordering::Relaxed),
            "holder": if holder_enabled { serde_json::to_value(holder.snapshot()).unwrap_or_default() } else { serde_json::json!("disabled: an agent restart breaks exec in watched containers") },
            "create_container_latency_us": {"count": n, "p50": p50, "p99": p99, "max": max},
        })
    })
}
