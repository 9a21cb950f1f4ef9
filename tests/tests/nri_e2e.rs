//! rce-guard as an NRI plugin of a real containerd, 1.7 (NRI api 0.6.1) and 2.1 (NRI api 0.8.0),
//! driven through CRI as kubelet drives it. No mocks: every test starts its own containerd and
//! the real `rce-guard` binary, and reads what both of them log.
//!
//! Numbers (registration time, time to re-register after a restart, Synchronize sizes) are
//! printed: run with `--nocapture` to see them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rce_guard_e2e::{
    Agent, ContainerSpec, Containerd, Cri, LogLine, Pod, PodSpec, Version, BUSYBOX_IMAGE,
};

/// Plugin name and index the agent registers with by default.
const PLUGIN: &str = "10-rce-guard";
/// Registration, including the agent's own start.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an event (container created, removed) may take to show up in the agent's log.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnecting after containerd went away, including backoff.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);

macro_rules! on_both_versions {
    ($($name:ident),* $(,)?) => {
        mod v1_7 {
            $( #[test] fn $name() { super::$name(super::Version::V1_7) } )*
        }
        mod v2_1 {
            $( #[test] fn $name() { super::$name(super::Version::V2_1) } )*
        }
    };
}

on_both_versions!(
    registers_and_synchronizes,
    cri_container_reaches_the_registry_and_removal_is_logged,
    containers_that_existed_before_the_agent_arrive_through_synchronize,
    agent_reconnects_and_resyncs_after_containerd_restart,
    large_synchronize_of_20_pods,
);

/// Only containerd 2.x (NRI >= 0.8) splits a Synchronize that does not fit one ttrpc message
/// (4 MiB); containerd 1.7's NRI 0.6.1 cannot sync such a state at all.
#[test]
fn v2_1_synchronize_over_4_mib_arrives_in_chunks() {
    let v = Version::V2_1;
    let cd = Containerd::start(v).expect("start containerd");
    let cri = cd.cri().expect("CRI client");
    // 20 pods x 11 annotations x 20 KiB = 4.4 MiB of pod annotations alone.
    let pods = make_big_pods(&cri, 20, 11, 20 * 1024, "huge");
    let lower_bound: usize = pods.iter().map(|p| spec_bytes(&p.spec)).sum();

    let agent = Agent::start(&cd).expect("start agent");
    let sync = agent
        .wait_for_message(
            0,
            "synchronized",
            &[("pods", "20"), ("containers", "20")],
            REGISTRATION_TIMEOUT,
        )
        .expect("agent synchronized 20 pods and 20 containers");
    let chunks: u32 = sync
        .field("chunks")
        .and_then(|c| c.parse().ok())
        .expect("chunks field");
    println!(
        "containerd {}: Synchronize of >= {lower_bound} bytes ({:.1} MiB, pod labels+annotations \
         alone) arrived in {chunks} chunks, {:?} after agent start",
        v.label(),
        lower_bound as f64 / (1024.0 * 1024.0),
        sync.at - agent.started_at()
    );
    assert!(
        lower_bound > 4 << 20,
        "state {lower_bound} bytes is not over 4 MiB"
    );
    assert!(
        chunks >= 2,
        "a Synchronize over 4 MiB must come in chunks, got {chunks}"
    );
    expect_containerd_synced(&cd, 0);
    expect_registered_by_sync(&agent, &cri, &pods);
}

fn registers_and_synchronizes(v: Version) {
    let cd = Containerd::start(v).expect("start containerd");
    let agent = Agent::start(&cd).expect("start agent");
    let reg = agent
        .wait_for_message(
            0,
            "registered with runtime",
            &[("runtime_name", "containerd")],
            REGISTRATION_TIMEOUT,
        )
        .expect("agent registered with containerd");
    let runtime_version = reg.field("runtime_version").unwrap_or_default();
    assert!(
        runtime_version
            .trim_start_matches('v')
            .starts_with(&format!("{}.", v.label())),
        "runtime_version {runtime_version:?} is not containerd {}",
        v.label()
    );
    assert_eq!(
        reg.field("nri_api").as_deref(),
        Some(expected_nri_api(v)),
        "{}",
        reg.raw
    );
    let sync = agent
        .wait_for_message(
            0,
            "synchronized",
            &[("pods", "0"), ("containers", "0")],
            REGISTRATION_TIMEOUT,
        )
        .expect("agent synchronized an empty node");
    println!(
        "containerd {} ({runtime_version}, NRI api {}): registered {:?} and synchronized {:?} \
         after agent start; events {}",
        v.label(),
        expected_nri_api(v),
        reg.at - agent.started_at(),
        sync.at - agent.started_at(),
        reg.field("events").unwrap_or_default()
    );

    // containerd's side of the story, in its own words.
    let registered = cd
        .wait_for_log(&registered_line(agent.pid()), EVENT_TIMEOUT)
        .expect("containerd logs the registration");
    let connected = expect_containerd_synced(&cd, 0);
    println!(
        "containerd {} says:\n  {registered}\n  {connected}",
        v.label()
    );
}

fn cri_container_reaches_the_registry_and_removal_is_logged(v: Version) {
    let cd = Containerd::start(v).expect("start containerd");
    let agent = Agent::start(&cd).expect("start agent");
    agent
        .wait_for_message(0, "synchronized", &[], REGISTRATION_TIMEOUT)
        .expect("agent synchronized");
    let cri = cd.cri().expect("CRI client");

    let mark = agent.log_mark();
    let t = Instant::now();
    let pod = cri
        .run_pod(&PodSpec::new("web-1").namespace("shop").label("app", "web"))
        .expect("RunPodSandbox");
    let id = cri
        .run_container(&pod, &ContainerSpec::sleeper("frontend"))
        .expect("create+start container");
    let line = agent
        .wait_for_message(
            mark,
            "container registered",
            &[("container_id", &id)],
            EVENT_TIMEOUT,
        )
        .expect("the new container shows up in the registry");
    println!(
        "containerd {}: container registered {:?} after RunPodSandbox started",
        v.label(),
        line.at - t
    );
    assert_identity(&line, &id, "frontend", &pod);
    assert_eq!(
        line.field("source").as_deref(),
        Some("event"),
        "{}",
        line.raw
    );

    cri.stop_container(&id, Duration::from_secs(1))
        .expect("StopContainer");
    let mark = agent.log_mark();
    let t = Instant::now();
    cri.remove_container(&id).expect("RemoveContainer");
    let removed = agent
        .wait_for_message(
            mark,
            "container removed",
            &[("container_id", &id)],
            EVENT_TIMEOUT,
        )
        .expect("removal is logged");
    println!(
        "containerd {}: container removed {:?} after RemoveContainer started",
        v.label(),
        removed.at - t
    );
    cri.stop_pod(&pod.id).expect("StopPodSandbox");
    cri.remove_pod(&pod.id).expect("RemovePodSandbox");
}

fn containers_that_existed_before_the_agent_arrive_through_synchronize(v: Version) {
    let cd = Containerd::start(v).expect("start containerd");
    let cri = cd.cri().expect("CRI client");
    let mut pods = Vec::new();
    for i in 0..2 {
        let spec = PodSpec::new(&format!("early-{i}")).namespace(&format!("team-{i}"));
        let pod = cri.run_pod(&spec).expect("RunPodSandbox");
        let id = cri
            .run_container(&pod, &ContainerSpec::sleeper(&format!("worker-{i}")))
            .expect("create+start container");
        pods.push((pod, id));
    }

    let agent = Agent::start(&cd).expect("start agent");
    let sync = agent
        .wait_for_message(
            0,
            "synchronized",
            &[("pods", "2"), ("containers", "2")],
            REGISTRATION_TIMEOUT,
        )
        .expect("agent synchronized both pods and containers");
    println!(
        "containerd {}: synchronized 2 pods, 2 containers {:?} after agent start",
        v.label(),
        sync.at - agent.started_at()
    );
    for (i, (pod, id)) in pods.iter().enumerate() {
        let line = agent
            .wait_for_message(
                0,
                "container registered",
                &[("container_id", id)],
                EVENT_TIMEOUT,
            )
            .expect("pre-existing container is in the registry");
        assert_identity(&line, id, &format!("worker-{i}"), pod);
        assert_eq!(
            line.field("source").as_deref(),
            Some("synchronize"),
            "{}",
            line.raw
        );
    }
    expect_containerd_synced(&cd, 0);
}

fn agent_reconnects_and_resyncs_after_containerd_restart(v: Version) {
    let mut cd = Containerd::start(v).expect("start containerd");
    let cri = cd.cri().expect("CRI client");
    let pod = cri.run_pod(&PodSpec::new("steady")).expect("RunPodSandbox");
    let before = cri
        .run_container(&pod, &ContainerSpec::sleeper("before"))
        .expect("container before restart");
    drop(cri);

    let agent = Agent::start(&cd).expect("start agent");
    let first = agent
        .wait_for_message(
            0,
            "synchronized",
            &[("pods", "1"), ("containers", "1")],
            REGISTRATION_TIMEOUT,
        )
        .expect("first synchronize");
    let first_registration = agent
        .wait_for_message(0, "registered with runtime", &[], Duration::ZERO)
        .expect("registered before synchronized");

    println!(
        "containerd {}: first registration {:?} after agent start (synchronized {:?})",
        v.label(),
        first_registration.at - agent.started_at(),
        first.at - agent.started_at(),
    );

    let mut ids = vec![before];
    type Restart = fn(&mut Containerd) -> anyhow::Result<Instant>;
    let restarts: [(&str, Restart); 2] = [
        ("graceful restart (SIGTERM)", Containerd::restart),
        ("crash (SIGKILL) and restart", Containerd::crash_and_restart),
    ];
    for (round, (how, restart)) in restarts.into_iter().enumerate() {
        let mark = agent.log_mark();
        let log_mark = cd.log_mark();
        let stopping = Instant::now();
        let started = restart(&mut cd).expect("restart containerd");
        agent
            .wait_for_message(
                mark,
                "disconnected from runtime, reconnecting",
                &[],
                RECONNECT_TIMEOUT,
            )
            .expect("agent noticed that containerd went away");
        let reg = agent
            .wait_for_message(mark, "registered with runtime", &[], RECONNECT_TIMEOUT)
            .expect("agent registered again by itself");
        let containers = ids.len().to_string();
        let sync = agent
            .wait_for_message(
                mark,
                "synchronized",
                &[("pods", "1"), ("containers", &containers)],
                RECONNECT_TIMEOUT,
            )
            .expect("agent re-synchronized the running pod and containers");
        println!(
            "containerd {}, {how}: re-registered {:?} after the new containerd was spawned \
             ({:?} after the old one was told to stop), re-synchronized {:?} after spawn",
            v.label(),
            reg.at.saturating_duration_since(started),
            reg.at - stopping,
            sync.at.saturating_duration_since(started),
        );
        cd.wait_for_log_after(log_mark, &registered_line(agent.pid()), EVENT_TIMEOUT)
            .expect("the new containerd logs the registration");
        expect_containerd_synced(&cd, log_mark);

        // Events flow on the new connection.
        let cri = cd.cri().expect("CRI client after restart");
        let mark = agent.log_mark();
        let name = format!("after-{round}");
        let id = cri
            .run_container(&pod, &ContainerSpec::sleeper(&name))
            .expect("container after restart");
        let line = agent
            .wait_for_message(
                mark,
                "container registered",
                &[("container_id", &id)],
                EVENT_TIMEOUT,
            )
            .expect("a container created after the restart reaches the registry");
        assert_identity(&line, &id, &name, &pod);
        assert_eq!(
            line.field("source").as_deref(),
            Some("event"),
            "{}",
            line.raw
        );
        ids.push(id);
    }
}

fn large_synchronize_of_20_pods(v: Version) {
    let cd = Containerd::start(v).expect("start containerd");
    let cri = cd.cri().expect("CRI client");
    // 20 pods x (4 annotations x 2 KiB + 8 long labels): well over 64 KiB, far over one
    // 4096-byte frame, under the 4 MiB of one ttrpc message.
    let pods = make_big_pods(&cri, 20, 4, 2048, "bulk");
    let lower_bound: usize = pods.iter().map(|p| spec_bytes(&p.spec)).sum();
    assert!(
        lower_bound > 64 * 1024,
        "state of {lower_bound} bytes is not over 64 KiB"
    );

    let agent = Agent::start(&cd).expect("start agent");
    let sync = agent
        .wait_for_message(
            0,
            "synchronized",
            &[("pods", "20"), ("containers", "20")],
            REGISTRATION_TIMEOUT,
        )
        .expect("agent synchronized 20 pods and 20 containers");
    println!(
        "containerd {}: Synchronize of >= {lower_bound} bytes ({} KiB of pod labels+annotations \
         alone) in {} chunk(s), synchronized {:?} after agent start",
        v.label(),
        lower_bound / 1024,
        sync.field("chunks").unwrap_or_else(|| "?".into()),
        sync.at - agent.started_at()
    );
    expect_containerd_synced(&cd, 0);
    expect_registered_by_sync(&agent, &cri, &pods);
}

/// Runs `count` pods, each with `annotations` annotations of `value_len` bytes and 8 long
/// labels, and one sleeping container.
fn make_big_pods(
    cri: &Cri,
    count: usize,
    annotations: usize,
    value_len: usize,
    prefix: &str,
) -> Vec<Pod> {
    let t = Instant::now();
    let pods: Vec<Pod> = (0..count)
        .map(|i| {
            let mut spec = PodSpec::new(&format!("{prefix}-{i:02}")).namespace("bulk");
            for a in 0..annotations {
                let value = filler(value_len, i * 100 + a);
                spec = spec.annotation(&format!("example.com/blob-{a}"), &value);
            }
            for l in 0..8 {
                spec = spec.label(&format!("example.com/label-{l}"), &filler(63, i * 10 + l));
            }
            let pod = cri.run_pod(&spec).expect("RunPodSandbox");
            cri.run_container(&pod, &ContainerSpec::sleeper("main"))
                .expect("create+start container");
            pod
        })
        .collect();
    println!("created {count} pods with containers in {:?}", t.elapsed());
    pods
}

/// Every container of `pods` was registered through Synchronize, with the right identity.
fn expect_registered_by_sync(agent: &Agent, cri: &Cri, pods: &[Pod]) {
    let by_pod: HashMap<&str, &Pod> = pods.iter().map(|p| (p.id.as_str(), p)).collect();
    let containers = cri.list_containers().expect("ListContainers");
    assert_eq!(containers.len(), pods.len(), "one container per pod");
    for c in &containers {
        let pod = by_pod[c.pod_sandbox_id.as_str()];
        let line = agent
            .wait_for_message(
                0,
                "container registered",
                &[("container_id", &c.id)],
                EVENT_TIMEOUT,
            )
            .expect("every container is in the registry");
        assert_identity(&line, &c.id, "main", pod);
        assert_eq!(
            line.field("source").as_deref(),
            Some("synchronize"),
            "{}",
            line.raw
        );
    }
}

fn assert_identity(line: &LogLine, id: &str, container_name: &str, pod: &Pod) {
    let expect = [
        ("container_id", id),
        ("container_name", container_name),
        ("pod_name", pod.spec.name.as_str()),
        ("pod_namespace", pod.spec.namespace.as_str()),
        ("pod_uid", pod.spec.uid.as_str()),
        ("image", BUSYBOX_IMAGE),
    ];
    for (field, want) in expect {
        assert_eq!(
            line.field(field).as_deref(),
            Some(want),
            "{field} in {}",
            line.raw
        );
    }
}

/// Bytes of labels and annotations (keys and values) in a pod spec: a lower bound of what the
/// pod adds to a Synchronize request.
fn spec_bytes(spec: &PodSpec) -> usize {
    spec.labels
        .iter()
        .chain(&spec.annotations)
        .map(|(k, v)| k.len() + v.len())
        .sum()
}

/// `len` printable bytes that differ per `seed` (so nothing compresses or deduplicates).
fn filler(len: usize, seed: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

fn expected_nri_api(v: Version) -> &'static str {
    match v {
        Version::V1_7 => "0.6",
        Version::V2_1 => "0.8",
    }
}

/// containerd's log line for an external plugin's registration (both NRI 0.6.1 and 0.8.0):
/// `plugin "external:10-rce-guard[<pid>]" registered as "10-rce-guard"`, as logrus quotes it.
fn registered_line(agent_pid: u32) -> String {
    format!(r#"msg="plugin \"external:{PLUGIN}[{agent_pid}]\" registered as \"{PLUGIN}\"""#)
}

/// containerd (from log byte `mark` on) says the plugin is connected, and did not fail to
/// synchronize it (NRI 0.6.1 logs "connected" even after a failed Synchronize). Returns the
/// "connected" line.
fn expect_containerd_synced(cd: &Containerd, mark: u64) -> String {
    let connected = cd
        .wait_for_log_after(mark, &connected_line(cd.version()), EVENT_TIMEOUT)
        .expect("containerd logs the plugin as connected");
    let log = cd.log_contents();
    let since = usize::try_from(mark)
        .ok()
        .and_then(|m| log.get(m..))
        .unwrap_or(&log);
    if let Some(failure) = since
        .lines()
        .find(|l| l.contains("failed to synchronize plugin"))
    {
        panic!("containerd failed to synchronize the plugin: {failure}");
    }
    connected
}

/// containerd's log line once the plugin is connected: NRI 0.6.1 says `plugin "..."
/// connected`, NRI 0.8.0 `plugin "..." connected and synchronized`.
fn connected_line(v: Version) -> String {
    match v {
        Version::V1_7 => format!(r#"msg="plugin \"{PLUGIN}\" connected""#),
        Version::V2_1 => format!(r#"msg="plugin \"{PLUGIN}\" connected and synchronized""#),
    }
}
