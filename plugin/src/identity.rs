//! Who a container is: the pod and container identity that every finding carries.
//!
//! Filled from NRI (the registry) or, when the registry has no entry yet, from the CRI
//! annotations that containerd puts into the OCI spec (and so into runc's state payload).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// CRI annotation keys that containerd sets on every container it creates for kubelet.
pub mod cri_annotations {
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    /// Value of `CONTAINER_TYPE` for the pod sandbox (pause) container.
    pub const TYPE_SANDBOX: &str = "sandbox";
}

/// Identity of one container, as the runtime knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerIdentity {
    pub container_id: String,
    pub container_name: String,
    pub pod_sandbox_id: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    /// Image reference as the user wrote it (`io.kubernetes.cri.image-name`).
    pub image: String,
    /// Resolved image id (digest) when the runtime told us.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image_id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// True for the pod sandbox (pause) container.
    #[serde(default)]
    pub is_sandbox: bool,
}

impl ContainerIdentity {
    /// Identity from the CRI annotations of an OCI spec or runc state payload. Pod labels are
    /// not among them; everything else is.
    pub fn from_cri_annotations(container_id: &str, ann: &BTreeMap<String, String>) -> Self {
        use cri_annotations as k;
        let get = |key: &str| ann.get(key).cloned().unwrap_or_default();
        ContainerIdentity {
            container_id: container_id.to_string(),
            container_name: get(k::CONTAINER_NAME),
            pod_sandbox_id: get(k::SANDBOX_ID),
            pod_name: get(k::SANDBOX_NAME),
            pod_namespace: get(k::SANDBOX_NAMESPACE),
            pod_uid: get(k::SANDBOX_UID),
            image: get(k::IMAGE_NAME),
            image_id: String::new(),
            pod_labels: BTreeMap::new(),
            pod_annotations: BTreeMap::new(),
            is_sandbox: ann.get(k::CONTAINER_TYPE).map(String::as_str) == Some(k::TYPE_SANDBOX),
        }
    }

    /// True when the CRI identity is complete enough to attribute a finding to a pod.
    pub fn has_pod_identity(&self) -> bool {
        !self.pod_name.is_empty() && !self.pod_namespace.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_cri_annotations() {
        let mut ann = BTreeMap::new();
        ann.insert(cri_annotations::CONTAINER_NAME.into(), "web".into());
        ann.insert(cri_annotations::SANDBOX_NAME.into(), "web-7d9".into());
        ann.insert(cri_annotations::SANDBOX_NAMESPACE.into(), "shop".into());
        ann.insert(cri_annotations::IMAGE_NAME.into(), "nginx:1.27".into());
        ann.insert(cri_annotations::CONTAINER_TYPE.into(), "container".into());
        let id = ContainerIdentity::from_cri_annotations("abc", &ann);
        assert_eq!(id.container_name, "web");
        assert_eq!(id.pod_name, "web-7d9");
        assert_eq!(id.pod_namespace, "shop");
        assert_eq!(id.image, "nginx:1.27");
        assert!(!id.is_sandbox);
        assert!(id.has_pod_identity());
        ann.insert(cri_annotations::CONTAINER_TYPE.into(), "sandbox".into());
        assert!(ContainerIdentity::from_cri_annotations("abc", &ann).is_sandbox);
    }
}
