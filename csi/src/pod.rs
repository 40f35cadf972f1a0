//! How a pod uses its volume: where its containers mount it and as whom they
//! run, read from the pod's spec. kubelet's NodePublishVolume says neither,
//! yet the files need both: `.env` and `buildkitd.toml` name paths inside
//! the volume, and token-bearing files must be readable by the pod's user
//! (kubelet applies no fsGroup to a `readOnly: true` inline volume) and by
//! nobody else.
//!
//! In a cluster the spec is read once per volume ([`KubePods`]: one GET at
//! the first publish, from the API server's cache when it has the pod, kept
//! until unpublish); standalone there is no spec
//! ([`NoPods`]) and the defaults hold.

use std::collections::HashMap;
use std::sync::Mutex;

use access::caller::BoxFuture;
use connector::keys;
use k8s_openapi::api::core::v1::{Pod, PodSecurityContext, SecurityContext};

use crate::request::PodInfo;

/// What the pod's spec says about one of its connectors volumes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeUse {
    /// Where the containers (init containers included) mount the volume:
    /// distinct, in the spec's order.
    pub mount_paths: Vec<String>,
    /// The user every container that mounts the volume runs as, when the
    /// spec says so for all of them.
    pub user: Option<u32>,
    /// The pod's `fsGroup`, or else the group every such container runs as.
    pub group: Option<u32>,
}

/// Looks up how a pod uses a volume.
pub trait PodLookup: Send + Sync {
    /// `None` when the spec cannot be read (the files then use the default
    /// mount path and modes).
    fn volume_use<'a>(&'a self, pod: &'a PodInfo, volume_id: &'a str) -> BoxFuture<'a, Option<VolumeUse>>;
    /// The volume is gone.
    fn forget(&self, volume_id: &str);
}

/// Standalone: no pod specs.
pub struct NoPods;

impl PodLookup for NoPods {
    fn volume_use<'a>(&'a self, _: &'a PodInfo, _: &'a str) -> BoxFuture<'a, Option<VolumeUse>> {
        Box::pin(async { None })
    }

    fn forget(&self, _: &str) {}
}

/// Most volumes remembered at once; past it the memory starts over (the
/// next publish of each volume reads its pod again).
const REMEMBERED: usize = 4096;

/// Pod reads in flight at once. A node's pods start together; each read
/// beyond the connections already open opens one of its own (a TLS
/// handshake on both sides), so a full node's 110 reads at once cost more
/// than the same reads over a few connections.
const READS_AT_ONCE: usize = 16;

/// Reads pods through the API server, once per volume.
pub struct KubePods {
    client: kube::Client,
    known: Mutex<HashMap<String, VolumeUse>>,
    reads: tokio::sync::Semaphore,
}

impl KubePods {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            known: Mutex::new(HashMap::new()),
            reads: tokio::sync::Semaphore::new(READS_AT_ONCE),
        }
    }

    /// The pod's spec from the API server's cache (`resourceVersion=0`: no
    /// etcd read), or from etcd when the cache does not hold this pod yet
    /// (not found, or an older pod of the same name).
    async fn read(&self, pod: &PodInfo) -> Result<Pod, kube::Error> {
        // NB: the semaphore is never closed.
        let _permit = self.reads.acquire().await;
        let api: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), &pod.namespace);
        match api.get_with(&pod.name, &kube::api::GetParams::any()).await {
            Ok(spec) if is_the_pod(pod, &spec) => Ok(spec),
            Ok(_) => api.get(&pod.name).await,
            Err(kube::Error::Api(status)) if status.code == 404 => api.get(&pod.name).await,
            Err(error) => Err(error),
        }
    }
}

impl PodLookup for KubePods {
    fn volume_use<'a>(&'a self, pod: &'a PodInfo, volume_id: &'a str) -> BoxFuture<'a, Option<VolumeUse>> {
        Box::pin(async move {
            if let Some(known) = self.known.lock().unwrap_or_else(|e| e.into_inner()).get(volume_id) {
                return Some(known.clone());
            }
            let spec = match self.read(pod).await {
                Ok(spec) => spec,
                Err(error) => {
                    tracing::warn!(
                        pod = %format_args!("{}/{}", pod.namespace, pod.name),
                        %error,
                        "cannot read the pod's spec; the volume's files use the default mount path and modes"
                    );
                    return None;
                }
            };
            if !is_the_pod(pod, &spec) {
                return None;
            }
            let found = volume_use(&spec, volume_id)?;
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            if known.len() >= REMEMBERED {
                known.clear();
            }
            known.insert(volume_id.to_owned(), found.clone());
            Some(found)
        })
    }

    fn forget(&self, volume_id: &str) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).remove(volume_id);
    }
}

/// True unless `spec` is another pod of the name (kubelet said a UID and
/// it differs).
fn is_the_pod(pod: &PodInfo, spec: &Pod) -> bool {
    pod.uid.is_none() || spec.metadata.uid == pod.uid
}

/// kubelet's handle of an inline volume: `csi-<sha256(pod UID + volume name)>`.
pub fn volume_handle(pod_uid: &str, volume_name: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{pod_uid}{volume_name}").as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("csi-{hex}")
}

/// How `pod` uses the connectors volume kubelet calls `volume_id`; `None`
/// when no volume of the pod has that handle.
pub fn volume_use(pod: &Pod, volume_id: &str) -> Option<VolumeUse> {
    let uid = pod.metadata.uid.as_deref()?;
    let spec = pod.spec.as_ref()?;
    let name = spec
        .volumes
        .iter()
        .flatten()
        .filter(|volume| volume.csi.as_ref().is_some_and(|csi| csi.driver == keys::CSI_DRIVER))
        .map(|volume| volume.name.as_str())
        .find(|name| volume_handle(uid, name) == volume_id)?;
    let pod_context = spec.security_context.as_ref();
    let mut found = VolumeUse::default();
    let mut users = Vec::new();
    let mut groups = Vec::new();
    let containers = spec.init_containers.iter().flatten().chain(spec.containers.iter());
    for container in containers {
        let mounts: Vec<&str> = container
            .volume_mounts
            .iter()
            .flatten()
            .filter(|mount| mount.name == name)
            .map(|mount| mount.mount_path.trim_end_matches('/'))
            .collect();
        if mounts.is_empty() {
            continue;
        }
        for path in mounts {
            let path = if path.is_empty() { "/" } else { path };
            if !found.mount_paths.iter().any(|known| known == path) {
                found.mount_paths.push(path.to_owned());
            }
        }
        let context = container.security_context.as_ref();
        users.push(run_as(context, pod_context, |c| c.run_as_user, |p| p.run_as_user));
        groups.push(run_as(context, pod_context, |c| c.run_as_group, |p| p.run_as_group));
    }
    let same = |ids: &[Option<i64>]| match ids.first() {
        Some(Some(first)) if ids.iter().all(|id| *id == Some(*first)) => u32::try_from(*first).ok(),
        _ => None,
    };
    found.user = same(&users);
    found.group = pod_context
        .and_then(|p| p.fs_group)
        .and_then(|group| u32::try_from(group).ok())
        .or_else(|| same(&groups));
    Some(found)
}

/// A container's id: its own security context's, else the pod's.
fn run_as(
    container: Option<&SecurityContext>,
    pod: Option<&PodSecurityContext>,
    of_container: impl Fn(&SecurityContext) -> Option<i64>,
    of_pod: impl Fn(&PodSecurityContext) -> Option<i64>,
) -> Option<i64> {
    container.and_then(of_container).or_else(|| pod.and_then(of_pod))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: &str) -> Pod {
        serde_json::from_str(json).unwrap()
    }

    const UID: &str = "0b0e1c9a-5f0d-4c4e-9f55-1d2f3a4b5c6d";

    fn seed_pod(security: &str, containers: &str) -> Pod {
        pod(&format!(
            r#"{{"metadata": {{"name": "p", "namespace": "team", "uid": "{UID}"}},
                "spec": {{{security}"containers": {containers},
                  "volumes": [
                    {{"name": "other", "emptyDir": {{}}}},
                    {{"name": "proxyconfig", "csi": {{"driver": "connectors-csi", "readOnly": true}}}}]}}}}"#
        ))
    }

    #[test]
    fn the_handle_is_kubelets() {
        // kubelet's makeVolumeHandle: csi-<sha256(podUID + volume name)>
        // (the digest from sha256sum).
        assert_eq!(
            volume_handle("c0ffee-uid", "proxyconfig"),
            "csi-630e94138e529f61f800824f6781f71a25b9762319e8123bb52433b512c0bc01"
        );
    }

    #[test]
    fn mount_paths_and_ids_come_from_the_containers_that_mount_the_volume() {
        let pod = seed_pod(
            r#""securityContext": {"runAsUser": 1000, "runAsGroup": 3000},"#,
            r#"[{"name": "a", "image": "x", "volumeMounts": [{"name": "proxyconfig", "mountPath": "/opt/connectors/"}]},
                {"name": "b", "image": "x", "securityContext": {"runAsUser": 0}},
                {"name": "c", "image": "x", "volumeMounts": [{"name": "proxyconfig", "mountPath": "/root/.docker"}]}]"#,
        );
        let found = volume_use(&pod, &volume_handle(UID, "proxyconfig")).unwrap();
        assert_eq!(found.mount_paths, ["/opt/connectors", "/root/.docker"]);
        assert_eq!(found.user, Some(1000), "b does not mount it");
        assert_eq!(found.group, Some(3000));
    }

    #[test]
    fn fs_group_wins_and_differing_users_leave_the_user_open() {
        let pod = seed_pod(
            r#""securityContext": {"runAsUser": 1000, "fsGroup": 2000},"#,
            r#"[{"name": "a", "image": "x", "volumeMounts": [{"name": "proxyconfig", "mountPath": "/cfg"}]},
                {"name": "b", "image": "x", "securityContext": {"runAsUser": 0},
                 "volumeMounts": [{"name": "proxyconfig", "mountPath": "/cfg"}]}]"#,
        );
        let found = volume_use(&pod, &volume_handle(UID, "proxyconfig")).unwrap();
        assert_eq!(found.mount_paths, ["/cfg"]);
        assert_eq!(found.user, None);
        assert_eq!(found.group, Some(2000));
    }

    #[test]
    fn an_image_chosen_user_is_unknown() {
        let pod = seed_pod(
            "",
            r#"[{"name": "a", "image": "x", "volumeMounts": [{"name": "proxyconfig", "mountPath": "/cfg"}]}]"#,
        );
        let found = volume_use(&pod, &volume_handle(UID, "proxyconfig")).unwrap();
        assert_eq!((found.user, found.group), (None, None));
    }

    #[test]
    fn another_handle_or_driver_is_not_this_volume() {
        let pod = seed_pod(
            "",
            r#"[{"name": "a", "image": "x", "volumeMounts": [{"name": "other", "mountPath": "/cfg"}]}]"#,
        );
        assert_eq!(volume_use(&pod, &volume_handle(UID, "other")), None, "not a CSI volume");
        assert_eq!(volume_use(&pod, &volume_handle("another-uid", "proxyconfig")), None);
    }

    /// The pod is read from the API server's cache (`resourceVersion=0`),
    /// and from etcd (no resourceVersion) only when the cache does not have
    /// it or has an older pod of the same name.
    #[tokio::test]
    async fn the_pod_is_read_from_the_api_servers_cache_and_from_etcd_only_when_the_cache_lacks_it() {
        use testing::apiserver::{FakeApiServer, PODS};
        let api = FakeApiServer::start(&[PODS]).await;
        let mut stored = serde_json::to_value(seed_pod(
            "",
            r#"[{"name": "a", "image": "x", "volumeMounts": [{"name": "proxyconfig", "mountPath": "/cfg"}]}]"#,
        ))
        .unwrap();
        stored["apiVersion"] = serde_json::json!("v1");
        stored["kind"] = serde_json::json!("Pod");
        // NB: the API server gives the pod its UID.
        let uid = testing::apiserver::assigned_uid(api.apply(PODS, stored));
        let pods = KubePods::new(api.client());
        let info = |name: &str, uid: &str| PodInfo {
            namespace: "team".to_owned(),
            name: name.to_owned(),
            uid: Some(uid.to_owned()),
            service_account: "default".to_owned(),
        };
        let pod_reads = |name: &str| -> Vec<Option<String>> {
            api.requests()
                .into_iter()
                .filter(|r| r.method == "GET" && r.path == format!("/api/v1/namespaces/team/pods/{name}"))
                .map(|r| r.param("resourceVersion"))
                .collect()
        };

        let found = pods
            .volume_use(&info("p", &uid), &volume_handle(&uid, "proxyconfig"))
            .await;
        assert_eq!(found.unwrap().mount_paths, ["/cfg"]);
        assert_eq!(pod_reads("p"), [Some("0".to_owned())], "one read, from the cache");

        // An older pod of the same name in the cache: read again from etcd.
        let newer = "9a9a9a9a-0000-4000-8000-000000000001";
        let found = pods
            .volume_use(&info("p", newer), &volume_handle(newer, "proxyconfig"))
            .await;
        assert_eq!(found, None, "the pod read is not the one publishing");
        assert_eq!(pod_reads("p")[1..], [Some("0".to_owned()), None]);

        // Not in the cache (yet): read from etcd.
        let other = "9a9a9a9a-0000-4000-8000-000000000002";
        let found = pods
            .volume_use(&info("q", other), &volume_handle(other, "proxyconfig"))
            .await;
        assert_eq!(found, None);
        assert_eq!(pod_reads("q"), [Some("0".to_owned()), None]);
    }
}
