//! The containerd configuration file of one private instance, in the two schemas we test:
//! version 2 (containerd 1.7: CRI under `io.containerd.grpc.v1.cri`, NRI off unless enabled) and
//! version 3 (containerd 2.x: CRI split into `io.containerd.cri.v1.images` / `.runtime`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::{ContainerdOptions, RuntimeHandler, Version};
use crate::env::PAUSE_IMAGE;

/// Paths of one instance that the configuration refers to.
pub(crate) struct InstancePaths<'a> {
    pub root: &'a Path,
    pub state: &'a Path,
    pub grpc_socket: &'a Path,
    pub nri_socket: &'a Path,
    /// An empty directory: containerd must not launch any NRI plugin by itself.
    pub nri_plugin_dir: &'a Path,
    pub nri_config_dir: &'a Path,
}

/// Renders the whole configuration file.
pub(crate) fn render(opts: &ContainerdOptions, paths: &InstancePaths<'_>) -> String {
    let mut out = String::new();
    let v = opts.version;
    let (cfg_version, plugins) = match v {
        Version::V1_7 => (2, "\"io.containerd.grpc.v1.cri\""),
        Version::V2_1 => (3, "'io.containerd.cri.v1.runtime'"),
    };
    let _ = writeln!(out, "version = {cfg_version}");
    let _ = writeln!(out, "root = {}", q(paths.root));
    let _ = writeln!(out, "state = {}", q(paths.state));
    let _ = writeln!(out, "\n[grpc]\n  address = {}", q(paths.grpc_socket));
    let _ = writeln!(out, "\n[debug]\n  level = {}", qs(&opts.log_level));
    let _ = writeln!(out, "\n[plugins]");

    // Image service: snapshotter and the sandbox (pause) image.
    match v {
        Version::V1_7 => {
            let _ = writeln!(out, "  [plugins.{plugins}]");
            let _ = writeln!(out, "    sandbox_image = {}", qs(PAUSE_IMAGE));
            runtime_basics(&mut out, "    ");
            let _ = writeln!(out, "    [plugins.{plugins}.containerd]");
            let _ = writeln!(out, "      snapshotter = 'overlayfs'");
        }
        Version::V2_1 => {
            let _ = writeln!(out, "  [plugins.'io.containerd.cri.v1.images']");
            let _ = writeln!(out, "    snapshotter = 'overlayfs'");
            let _ = writeln!(
                out,
                "    [plugins.'io.containerd.cri.v1.images'.pinned_images]"
            );
            let _ = writeln!(out, "      sandbox = {}", qs(PAUSE_IMAGE));
            let _ = writeln!(out, "  [plugins.{plugins}]");
            runtime_basics(&mut out, "    ");
            let _ = writeln!(out, "    [plugins.{plugins}.containerd]");
        }
    }
    let _ = writeln!(out, "      default_runtime_name = 'runc'");
    let runc = RuntimeHandler::new("runc", &opts.runc_binary);
    for handler in std::iter::once(&runc).chain(&opts.extra_handlers) {
        runtime_handler(&mut out, plugins, handler);
    }

    // NRI: our own socket, no plugins launched by containerd itself.
    let _ = writeln!(out, "\n  [plugins.'io.containerd.nri.v1.nri']");
    let _ = writeln!(out, "    disable = {}", !opts.nri);
    let _ = writeln!(out, "    disable_connections = false");
    let _ = writeln!(out, "    socket_path = {}", q(paths.nri_socket));
    let _ = writeln!(out, "    plugin_path = {}", q(paths.nri_plugin_dir));
    let _ = writeln!(out, "    plugin_config_path = {}", q(paths.nri_config_dir));
    if let Some(t) = opts.nri_registration_timeout {
        let _ = writeln!(out, "    plugin_registration_timeout = {}", go_duration(t));
    }
    if let Some(t) = opts.nri_request_timeout {
        let _ = writeln!(out, "    plugin_request_timeout = {}", go_duration(t));
    }
    out
}

/// Settings this machine needs for every pod: no CAP_SYS_RESOURCE (so never raise
/// oom_score_adj), and no CDI.
fn runtime_basics(out: &mut String, indent: &str) {
    let _ = writeln!(out, "{indent}restrict_oom_score_adj = true");
    let _ = writeln!(out, "{indent}enable_cdi = false");
}

fn runtime_handler(out: &mut String, plugins: &str, h: &RuntimeHandler) {
    let table = format!(
        "plugins.{plugins}.containerd.runtimes.{}",
        toml_key(&h.name)
    );
    let _ = writeln!(out, "      [{table}]");
    let _ = writeln!(out, "        runtime_type = 'io.containerd.runc.v2'");
    if !h.pod_annotations.is_empty() {
        let _ = writeln!(
            out,
            "        pod_annotations = {}",
            string_list(&h.pod_annotations)
        );
    }
    if !h.container_annotations.is_empty() {
        let list = string_list(&h.container_annotations);
        let _ = writeln!(out, "        container_annotations = {list}");
    }
    let _ = writeln!(out, "        [{table}.options]");
    let _ = writeln!(out, "          BinaryName = {}", qs(&h.binary_name));
    let _ = writeln!(out, "          SystemdCgroup = false");
}

/// A TOML basic string (escaped), from a path.
fn q(path: &Path) -> String {
    qs(&path.to_string_lossy())
}

/// A TOML basic string (escaped).
fn qs(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A table key: bare when it can be, quoted otherwise.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        key.to_string()
    } else {
        qs(key)
    }
}

fn string_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| qs(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// Go's duration syntax, in whole milliseconds.
fn go_duration(d: Duration) -> String {
    qs(&format!("{}ms", d.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn paths_in(dir: &Path) -> [PathBuf; 6] {
        [
            "root",
            "state",
            "c.sock",
            "nri.sock",
            "nri-plugins",
            "nri-conf",
        ]
        .map(|n| dir.join(n))
    }

    fn rendered(opts: &ContainerdOptions) -> String {
        let p = paths_in(Path::new("/tmp/rg-x"));
        render(
            opts,
            &InstancePaths {
                root: &p[0],
                state: &p[1],
                grpc_socket: &p[2],
                nri_socket: &p[3],
                nri_plugin_dir: &p[4],
                nri_config_dir: &p[5],
            },
        )
    }

    #[test]
    fn v1_7_config_enables_nri_and_uses_schema_2() {
        let text = rendered(
            &ContainerdOptions::new(Version::V1_7).nri_request_timeout(Duration::from_millis(1500)),
        );
        assert!(text.starts_with("version = 2\n"), "{text}");
        assert!(text.contains("[plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"rce-guard.test/pause:1\""), "{text}");
        assert!(text.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n          BinaryName = \"runc\""), "{text}");
        assert!(text.contains("disable = false"), "{text}");
        assert!(
            text.contains("socket_path = \"/tmp/rg-x/nri.sock\""),
            "{text}"
        );
        assert!(
            text.contains("plugin_request_timeout = \"1500ms\""),
            "{text}"
        );
        assert!(!text.contains("plugin_registration_timeout"), "{text}");
    }

    #[test]
    fn v2_1_config_uses_schema_3_and_extra_handlers() {
        let text = rendered(
            &ContainerdOptions::new(Version::V2_1)
                .runc_binary("/opt/wrap \"x\"")
                .handler(RuntimeHandler::new("crun", "crun").pod_annotation("rce-guard/*")),
        );
        assert!(text.starts_with("version = 3\n"), "{text}");
        assert!(text.contains("[plugins.'io.containerd.cri.v1.images'.pinned_images]\n      sandbox = \"rce-guard.test/pause:1\""), "{text}");
        assert!(
            text.contains("BinaryName = \"/opt/wrap \\\"x\\\"\""),
            "{text}"
        );
        assert!(text.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.crun.options]\n          BinaryName = \"crun\""), "{text}");
        assert!(
            text.contains("pod_annotations = [\"rce-guard/*\"]"),
            "{text}"
        );
        assert!(text.contains("restrict_oom_score_adj = true"), "{text}");
    }
}
