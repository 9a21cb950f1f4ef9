//! Which containers get the seccomp notify rule. Pure: pod facts and config in, decision with
//! a reason out (logged once per container and shown by `rce-guard status`).

use crate::config::InjectionConfig;
use crate::registry::{Injection, PodEntry};

/// Pod annotation with which a pod can opt out (when the config allows it).
pub const MONITOR_ANNOTATION: &str = "rce-guard.io/monitor";

pub fn decide(cfg: &InjectionConfig, pod: &PodEntry, is_sandbox: bool) -> Injection {
    if is_sandbox {
        return Injection::Skipped("pod sandbox (pause) container".into());
    }
    if !cfg.agent_pod_labels.is_empty()
        && cfg
            .agent_pod_labels
            .iter()
            .all(|(k, v)| pod.labels.get(k) == Some(v))
    {
        return Injection::Skipped("the agent's own pod".into());
    }
    if cfg.exclude_namespaces.contains(&pod.namespace) {
        return Injection::Skipped(format!("namespace {} is excluded", pod.namespace));
    }
    if pod.annotations.get(MONITOR_ANNOTATION).map(String::as_str) == Some("false") {
        if cfg.allow_opt_out {
            return Injection::Skipped(format!("opted out by annotation {MONITOR_ANNOTATION}"));
        }
        tracing::warn!(
            pod_namespace = %pod.namespace,
            pod_name = %pod.name,
            "pod asks to opt out of monitoring, but injection.allow_opt_out is false: monitoring it"
        );
    }
    Injection::Requested
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str) -> PodEntry {
        PodEntry {
            namespace: ns.into(),
            name: "p".into(),
            ..Default::default()
        }
    }

    #[test]
    fn decisions_and_reasons() {
        let cfg = InjectionConfig {
            exclude_namespaces: vec!["kube-system".into()],
            ..Default::default()
        };
        assert_eq!(decide(&cfg, &pod("app"), false), Injection::Requested);
        assert!(
            matches!(decide(&cfg, &pod("app"), true), Injection::Skipped(r) if r.contains("sandbox"))
        );
        assert!(
            matches!(decide(&cfg, &pod("kube-system"), false), Injection::Skipped(r) if r.contains("excluded"))
        );
        let mut agent = pod("rce-guard");
        agent
            .labels
            .insert("app.kubernetes.io/name".into(), "rce-guard".into());
        assert!(
            matches!(decide(&cfg, &agent, false), Injection::Skipped(r) if r.contains("own pod"))
        );
        let mut opt_out = pod("app");
        opt_out
            .annotations
            .insert(MONITOR_ANNOTATION.into(), "false".into());
        assert!(
            matches!(decide(&cfg, &opt_out, false), Injection::Skipped(r) if r.contains("opted out"))
        );
        let strict = InjectionConfig {
            allow_opt_out: false,
            ..cfg
        };
        assert_eq!(decide(&strict, &opt_out, false), Injection::Requested);
    }
}
