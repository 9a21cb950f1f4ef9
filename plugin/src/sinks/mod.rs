//! Where findings go. The judge hands an [`Observation`] to the [`FindingPipeline`] without
//! blocking; one pipeline thread merges duplicates, hashes the binary (off the exec path),
//! renders the line once, and writes it to every sink.
//!
//! Nothing is lost silently: when the queue is full the observation is counted and logged as
//! dropped; a sink that fails to write is counted and logged, and the other sinks still get it.
//!
//! [`FindingPipeline::submit_and_wait`] lets the judge hold a reported exec until its finding
//! is written (bounded): if the agent dies before that, the exec has not been answered yet and
//! is judged, and reported, again after the restart instead of being lost with the queue.

mod file;
mod stdout;

pub use file::FileSink;
pub use stdout::StdoutSink;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::finding::{self, BinaryDigest, NodeContext, Observation};

/// One queued observation, with an optional "written" acknowledgement for the judge.
struct Queued {
    obs: Observation,
    written: Option<SyncSender<()>>,
}

/// A destination for finding lines (one JSON object per line, no newline inside).
pub trait Sink: Send {
    fn name(&self) -> &str;
    fn write_line(&mut self, line: &str) -> std::io::Result<()>;
}

/// Binaries larger than this are not hashed (a container can offer anything).
const MAX_DIGEST_BYTES: u64 = 256 << 20;

#[derive(Debug, Default)]
pub struct PipelineStats {
    pub observed: AtomicU64,
    pub emitted: AtomicU64,
    pub merged: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub sink_errors: AtomicU64,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PipelineCounts {
    pub observed: u64,
    pub emitted: u64,
    pub merged: u64,
    pub dropped_queue_full: u64,
    pub sink_errors: u64,
}

impl PipelineStats {
    pub fn snapshot(&self) -> PipelineCounts {
        PipelineCounts {
            observed: self.observed.load(Ordering::Relaxed),
            emitted: self.emitted.load(Ordering::Relaxed),
            merged: self.merged.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            sink_errors: self.sink_errors.load(Ordering::Relaxed),
        }
    }
}

/// The sending side, cheap to clone into the judge.
#[derive(Clone)]
pub struct FindingPipeline {
    tx: SyncSender<Queued>,
    stats: Arc<PipelineStats>,
}

impl FindingPipeline {
    /// Starts the pipeline thread. It ends when every [`FindingPipeline`] clone is dropped,
    /// after flushing merged duplicates.
    pub fn start(
        sinks: Vec<Box<dyn Sink>>,
        node: NodeContext,
        queue: usize,
        dedup_window: Duration,
    ) -> (FindingPipeline, std::thread::JoinHandle<()>) {
        let (tx, rx) = sync_channel(queue.max(1));
        let stats = Arc::new(PipelineStats::default());
        let worker = Worker {
            rx,
            sinks,
            node,
            window: dedup_window,
            pending: HashMap::new(),
            digests: HashMap::new(),
            stats: stats.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("rce-guard-sinks".into())
            .spawn(move || worker.run())
            .expect("spawning the sink thread");
        (FindingPipeline { tx, stats }, handle)
    }

    /// Queues an observation; never blocks the caller (the exec path).
    pub fn submit(&self, obs: Observation) {
        self.enqueue(Queued { obs, written: None });
    }

    /// Queues an observation and waits at most `timeout` until it is written (or merged into
    /// a pending duplicate). Returns whether it was. Used for reported execs only, which are
    /// rare, so the wait costs nothing on the common exec path.
    pub fn submit_and_wait(&self, obs: Observation, timeout: Duration) -> bool {
        let (tx, rx) = sync_channel(1);
        if !self.enqueue(Queued {
            obs,
            written: Some(tx),
        }) {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }

    fn enqueue(&self, q: Queued) -> bool {
        self.stats.observed.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(q) {
            Ok(()) => true,
            Err(TrySendError::Full(Queued { obs, .. })) => {
                let n = self
                    .stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                // Log every drop at first, then every 100th: the count is the record.
                if n <= 10 || n.is_multiple_of(100) {
                    tracing::error!(
                        dropped_total = n,
                        container_id = %obs.identity.container_id,
                        program = %obs.event.program,
                        "finding queue full, finding dropped (sinks too slow)"
                    );
                }
                false
            }
            Err(TrySendError::Disconnected(Queued { obs, .. })) => {
                self.stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(program = %obs.event.program, "finding pipeline stopped, finding dropped");
                false
            }
        }
    }

    pub fn stats(&self) -> PipelineCounts {
        self.stats.snapshot()
    }
}

struct Pending {
    first: Instant,
    /// Repeats seen after the first (which was written at once).
    repeats: u64,
    last: Observation,
}

struct Worker {
    rx: Receiver<Queued>,
    sinks: Vec<Box<dyn Sink>>,
    node: NodeContext,
    window: Duration,
    pending: HashMap<String, Pending>,
    digests: HashMap<PathBuf, Option<BinaryDigest>>,
    stats: Arc<PipelineStats>,
}

impl Worker {
    fn run(mut self) {
        let tick = Duration::from_millis(500).min(self.window.max(Duration::from_millis(10)));
        loop {
            match self.rx.recv_timeout(tick) {
                Ok(Queued { obs, written }) => {
                    self.observe(obs);
                    if let Some(ack) = written {
                        let _ = ack.try_send(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.flush_expired(false);
        }
        self.flush_expired(true);
    }

    fn observe(&mut self, obs: Observation) {
        let key = obs.dedup_key();
        if let Some(p) = self.pending.get_mut(&key) {
            if p.first.elapsed() < self.window {
                p.repeats += 1;
                p.last = obs;
                self.stats.merged.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        self.emit(&obs, 1);
        if !self.window.is_zero() {
            self.pending.insert(
                key,
                Pending {
                    first: Instant::now(),
                    repeats: 0,
                    last: obs,
                },
            );
        }
    }

    /// Writes one merged line for every window that closed with repeats in it.
    fn flush_expired(&mut self, all: bool) {
        let window = self.window;
        let expired: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| all || p.first.elapsed() >= window)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            if let Some(p) = self.pending.remove(&k) {
                if p.repeats > 0 {
                    self.emit(&p.last, p.repeats);
                }
            }
        }
    }

    fn digest(&mut self, obs: &Observation) -> Option<BinaryDigest> {
        // The binary as the container sees it, through its init's root.
        let in_root = PathBuf::from(format!("/proc/{}/root{}", obs.init_pid, obs.event.program));
        if let Some(d) = self.digests.get(&in_root) {
            return d.clone();
        }
        let d = finding::digest_file(&in_root, MAX_DIGEST_BYTES);
        if self.digests.len() > 512 {
            self.digests.clear();
        }
        self.digests.insert(in_root, d.clone());
        d
    }

    fn emit(&mut self, obs: &Observation, count: u64) {
        let digest = if obs.init_pid > 0 && obs.event.program.starts_with('/') {
            self.digest(obs)
        } else {
            None
        };
        let line = finding::build(obs, &self.node, digest.as_ref(), count);
        let text = match serde_json::to_string(&line) {
            Ok(t) => t,
            Err(e) => {
                self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot render finding");
                return;
            }
        };
        for sink in &mut self.sinks {
            if let Err(e) = sink.write_line(&text) {
                self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sink = sink.name(), error = %e, finding = %text, "sink failed to write a finding");
            }
        }
        self.stats.emitted.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that records lines in memory.
    #[derive(Clone, Default)]
    pub struct MemorySink(pub Arc<Mutex<Vec<String>>>);

    impl Sink for MemorySink {
        fn name(&self) -> &str {
            "memory"
        }
        fn write_line(&mut self, line: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push(line.to_string());
            Ok(())
        }
    }

    struct FailingSink;
    impl Sink for FailingSink {
        fn name(&self) -> &str {
            "failing"
        }
        fn write_line(&mut self, _: &str) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
    }

    #[test]
    fn duplicates_within_window_merge_into_one_counted_line() {
        let mem = MemorySink::default();
        let (p, h) = FindingPipeline::start(
            vec![Box::new(mem.clone())],
            NodeContext::default(),
            16,
            Duration::from_secs(30),
        );
        for _ in 0..5 {
            p.submit(crate::finding::tests::sample());
        }
        let mut other = crate::finding::tests::sample();
        other.event.program = "/bin/ls".into();
        p.submit(other);
        let stats = p.stats.clone();
        drop(p);
        h.join().unwrap();
        let lines = mem.0.lock().unwrap();
        let counts: Vec<(String, u64)> = lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["finding"]["processes"][0]["binary"]["path"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    v["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            counts,
            vec![
                ("/bin/id".into(), 1),
                ("/bin/ls".into(), 1),
                ("/bin/id".into(), 4)
            ]
        );
        assert_eq!(stats.snapshot().merged, 4);
    }

    #[test]
    fn full_queue_counts_drops_and_failing_sink_does_not_starve_others() {
        let mem = MemorySink::default();
        // The worker is blocked behind nothing, so fill faster than it drains by using a
        // queue of 1 and many submissions; the exact split is racy, the accounting is not.
        let (p, h) = FindingPipeline::start(
            vec![Box::new(FailingSink), Box::new(mem.clone())],
            NodeContext::default(),
            1,
            Duration::ZERO,
        );
        for i in 0..200 {
            let mut o = crate::finding::tests::sample();
            o.event.tid = i;
            p.submit(o);
        }
        let stats = p.stats.clone();
        drop(p);
        h.join().unwrap();
        let s = stats.snapshot();
        assert_eq!(s.observed, 200);
        assert_eq!(s.emitted + s.dropped_queue_full, 200, "{s:?}");
        assert_eq!(s.sink_errors, s.emitted);
        assert_eq!(mem.0.lock().unwrap().len() as u64, s.emitted);
    }
}
