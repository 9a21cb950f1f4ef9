//! Which NRI API level a runtime speaks, and what that level allows.
//!
//! Runtimes before NRI 0.12 do not announce their NRI version, so it is derived from the
//! runtime's name and version (what containerd sends in `Configure`). When in doubt the
//! answer is the most conservative level, because an event bit the runtime does not know
//! makes it reject the plugin.

use std::fmt;

use super::events::EventMask;

/// An NRI API level that changes what a plugin may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NriApiLevel {
    /// 0.6 (containerd 1.7.0-1.7.25): no chunked Synchronize, no seccomp adjustment.
    V0_6,
    /// 0.8 (containerd 1.7.26+, 2.0, 2.1): chunked Synchronize; still events 1-11 only.
    V0_8,
    /// 0.10 (containerd 2.2.0): seccomp adjustment, argument adjustment, validation.
    V0_10,
    /// 0.11 (containerd 2.2.1+): also reports the container's seccomp profile.
    V0_11,
    /// 0.12 (containerd 2.3+): one RPC per event, announces its NRI version.
    V0_12,
}

impl NriApiLevel {
    /// The level used when nothing better is known.
    pub const MOST_CONSERVATIVE: NriApiLevel = NriApiLevel::V0_6;

    /// Derives the level from what the runtime says about itself in `Configure`:
    /// the NRI version it announces (NRI >= 0.12) wins; otherwise the runtime's own name
    /// and version decide; anything unknown gives [`NriApiLevel::MOST_CONSERVATIVE`].
    pub fn detect(runtime_name: &str, runtime_version: &str, nri_version: &str) -> NriApiLevel {
        if let Some(level) = Self::from_nri_version(nri_version) {
            return level;
        }
        if runtime_name.eq_ignore_ascii_case("containerd") {
            if let Some(level) = Self::from_containerd_version(runtime_version) {
                return level;
            }
        }
        Self::MOST_CONSERVATIVE
    }

    /// The level of an NRI module version such as `v0.12.1`.
    pub fn from_nri_version(version: &str) -> Option<NriApiLevel> {
        let (major, minor, _) = parse_version(version)?;
        Some(match (major, minor) {
            (0, ..=7) => NriApiLevel::V0_6,
            (0, 8..=9) => NriApiLevel::V0_8,
            (0, 10) => NriApiLevel::V0_10,
            (0, 11) => NriApiLevel::V0_11,
            _ => NriApiLevel::V0_12,
        })
    }

    /// The level that a containerd release (`v2.1.9`, `1.7.24`, `2.2.0-rc.1`) ships.
    pub fn from_containerd_version(version: &str) -> Option<NriApiLevel> {
        let (major, minor, patch) = parse_version(version)?;
        Some(match (major, minor, patch) {
            (0, ..) => return None,
            (1, 0..=6, _) => NriApiLevel::V0_6,
            (1, 7, 0..=25) => NriApiLevel::V0_6,
            (1, _, _) => NriApiLevel::V0_8,
            (2, 0..=1, _) => NriApiLevel::V0_8,
            (2, 2, 0) => NriApiLevel::V0_10,
            (2, 2, _) => NriApiLevel::V0_11,
            _ => NriApiLevel::V0_12,
        })
    }

    /// The events a runtime of this level accepts in `ConfigureResponse`.
    pub fn known_events(self) -> EventMask {
        if self >= NriApiLevel::V0_10 {
            EventMask::ALL
        } else {
            EventMask::UP_TO_REMOVE_CONTAINER
        }
    }

    /// Whether `LinuxContainerAdjustment.seccomp_policy` is applied (else silently dropped).
    pub fn supports_seccomp_adjustment(self) -> bool {
        self >= NriApiLevel::V0_10
    }

    /// Whether `ContainerAdjustment.args` is applied.
    pub fn supports_args_adjustment(self) -> bool {
        self >= NriApiLevel::V0_10
    }

    /// Whether the runtime calls `ValidateContainerAdjustment`.
    pub fn supports_validation(self) -> bool {
        self >= NriApiLevel::V0_10
    }

    /// Whether the runtime may split `Synchronize` into chunks.
    pub fn supports_chunked_sync(self) -> bool {
        self >= NriApiLevel::V0_8
    }

    /// Whether containerd fills `LinuxContainer.seccomp_profile` in requests.
    pub fn reports_seccomp_profile(self) -> bool {
        self >= NriApiLevel::V0_11
    }

    /// Whether containerd fills `LinuxContainer.seccomp_policy` (the full OCI policy).
    pub fn reports_seccomp_policy(self) -> bool {
        self >= NriApiLevel::V0_12
    }

    /// Whether every lifecycle event has its own RPC (else most come via `StateChange`).
    pub fn has_per_event_rpcs(self) -> bool {
        self >= NriApiLevel::V0_12
    }
}

impl fmt::Display for NriApiLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NriApiLevel::V0_6 => "0.6",
            NriApiLevel::V0_8 => "0.8",
            NriApiLevel::V0_10 => "0.10",
            NriApiLevel::V0_11 => "0.11",
            NriApiLevel::V0_12 => "0.12",
        })
    }
}

/// `v1.2.3-suffix` -> (1, 2, 3); a missing minor or patch counts as 0.
fn parse_version(version: &str) -> Option<(u64, u64, u64)> {
    let version = version.trim();
    let version = version.strip_prefix('v').unwrap_or(version);
    let core_end = version
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(version.len());
    let mut parts = version[..core_end].split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = match parts.next() {
        Some(p) => p.parse().ok()?,
        None => 0,
    };
    let patch = match parts.next() {
        Some(p) if !p.is_empty() => p.parse().ok()?,
        _ => 0,
    };
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rce_guard_proto::Event;
    use NriApiLevel::*;

    #[test]
    fn containerd_versions_map_to_their_nri_level() {
        let cases = [
            ("v1.7.0", V0_6),
            ("1.7.24", V0_6),
            // What Debian's builds actually report.
            ("1.7.24~ds1", V0_6),
            ("2.1.9+unknown", V0_8),
            ("v1.7.25", V0_6),
            ("v1.7.26", V0_8),
            ("v1.7.29", V0_8),
            ("v2.0.0", V0_8),
            ("v2.1.9", V0_8),
            ("v2.2.0", V0_10),
            ("v2.2.0-rc.1", V0_10),
            ("v2.2.1", V0_11),
            ("2.2.7+unknown", V0_11),
            ("v2.3.0", V0_12),
            ("v3.0.0", V0_12),
        ];
        for (version, want) in cases {
            assert_eq!(
                NriApiLevel::detect("containerd", version, ""),
                want,
                "{version}"
            );
        }
    }

    #[test]
    fn unknown_runtimes_and_versions_are_most_conservative() {
        for (name, version) in [
            ("containerd", ""),
            ("containerd", "garbage"),
            ("containerd", "v0.9.1"),
            ("containerd", "v2.x"),
            ("cri-o", "1.33.0"),
            ("", "v2.2.1"),
        ] {
            assert_eq!(
                NriApiLevel::detect(name, version, ""),
                V0_6,
                "{name} {version}"
            );
        }
    }

    #[test]
    fn announced_nri_version_wins() {
        assert_eq!(
            NriApiLevel::detect("containerd", "v2.1.0", "v0.12.1"),
            V0_12
        );
        assert_eq!(NriApiLevel::detect("cri-o", "1.34", "v0.11.0"), V0_11);
        assert_eq!(
            NriApiLevel::detect("containerd", "v2.3.0", "unknown"),
            V0_12
        );
    }

    #[test]
    fn capabilities_follow_the_level() {
        assert!(!V0_8.supports_seccomp_adjustment());
        assert!(V0_10.supports_seccomp_adjustment());
        assert!(!V0_8.supports_validation());
        assert!(V0_11.supports_validation());
        assert!(!V0_6.supports_chunked_sync());
        assert!(V0_8.supports_chunked_sync());
        assert!(!V0_10.reports_seccomp_profile());
        assert!(V0_11.reports_seccomp_profile());
        assert!(V0_12.reports_seccomp_policy());
        assert!(!V0_11.has_per_event_rpcs());
    }

    #[test]
    fn runtimes_before_0_10_know_no_event_above_remove_container() {
        for level in [V0_6, V0_8] {
            let known = level.known_events();
            assert!(known.contains(Event::REMOVE_CONTAINER));
            assert!(!known.contains(Event::UPDATE_POD_SANDBOX));
            assert!(!known.contains(Event::VALIDATE_CONTAINER_ADJUSTMENT));
            assert_eq!(known.bits() >> 11, 0);
        }
        assert!(V0_10
            .known_events()
            .contains(Event::VALIDATE_CONTAINER_ADJUSTMENT));
    }
}
