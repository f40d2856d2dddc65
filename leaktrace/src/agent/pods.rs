//! The pods on this node, as the Kubernetes API describes them: names, namespaces, labels and
//! container names for the processes the cgroup paths tie to a pod UID.
//!
//! One watch, filtered by the API server to this node's pods (`spec.nodeName`), so an agent
//! on every node of a large cluster reads only its own share.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::Serialize;
use tracing::{info, warn};

/// What the agent needs of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// Container names by container id (the id without its `containerd://` scheme).
    pub containers: HashMap<String, String>,
}

/// The pods known so far, by UID, shared between the watch and the agent.
#[derive(Clone, Default)]
pub struct Pods {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    by_uid: RwLock<HashMap<String, PodMeta>>,
    /// Whether the first full list has arrived: until then a process's pod may simply not be
    /// known yet.
    synced: AtomicBool,
    /// Watch errors (the watch retries with backoff).
    errors: AtomicU64,
}

impl Pods {
    /// The pod with this UID, if known.
    pub fn get(&self, uid: &str) -> Option<PodMeta> {
        self.inner
            .by_uid
            .read()
            .ok()
            .and_then(|pods| pods.get(uid).cloned())
    }

    pub fn synced(&self) -> bool {
        self.inner.synced.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    pub fn count(&self) -> usize {
        self.inner.by_uid.read().map_or(0, |p| p.len())
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, PodMeta>) -> R) -> Option<R> {
        self.inner.by_uid.write().ok().map(|mut pods| f(&mut pods))
    }
}

/// Why the Kubernetes API cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("no Kubernetes client configuration (in-cluster service account or KUBECONFIG): {0}")]
    Config(#[source] kube::config::InferConfigError),
    #[error("cannot create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error(
        "the node name is unknown: set NODE_NAME from the downward API (spec.nodeName) or pass \
         --node-name, so that only this node's pods are watched"
    )]
    NoNodeName,
}

/// Connects to the API server and starts watching this node's pods in the background.
pub async fn watch(node: Option<&str>) -> Result<Pods, PodsError> {
    let node = node.ok_or(PodsError::NoNodeName)?;
    let config = kube::Config::infer().await.map_err(PodsError::Config)?;
    let client = Client::try_from(config).map_err(PodsError::Client)?;
    let pods = Pods::default();
    let api: Api<Pod> = Api::all(client);
    let selector = format!("spec.nodeName={node}");
    let shared = pods.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(
            watcher(api, watcher::Config::default().fields(&selector)).default_backoff()
        );
        // A relist replaces the whole set: pods deleted while the watch was down go with it.
        let mut relisted: Option<HashMap<String, PodMeta>> = None;
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => relisted = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(pod)) => {
                    if let (Some(list), Some((uid, meta))) = (relisted.as_mut(), describe(&pod)) {
                        list.insert(uid, meta);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let list = relisted.take().unwrap_or_default();
                    let count = list.len();
                    shared.with(|pods| *pods = list);
                    shared.inner.synced.store(true, Ordering::Relaxed);
                    info!(pods = count, "pod list in sync");
                }
                Ok(watcher::Event::Apply(pod)) => {
                    if let Some((uid, meta)) = describe(&pod) {
                        shared.with(|pods| pods.insert(uid, meta));
                    }
                }
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(uid) = pod.metadata.uid.as_ref() {
                        shared.with(|pods| pods.remove(uid));
                    }
                }
                Err(err) => {
                    shared.inner.errors.fetch_add(1, Ordering::Relaxed);
                    warn!(%err, "pod watch failed; retrying");
                }
            }
        }
    });
    Ok(pods)
}

/// A pod's UID and what the agent keeps of it.
fn describe(pod: &Pod) -> Option<(String, PodMeta)> {
    let meta = &pod.metadata;
    let uid = meta.uid.clone()?;
    let statuses = pod.status.iter().flat_map(|s| {
        let regular = s.container_statuses.iter().flatten();
        let init = s.init_container_statuses.iter().flatten();
        let ephemeral = s.ephemeral_container_statuses.iter().flatten();
        regular.chain(init).chain(ephemeral)
    });
    let containers = statuses
        .filter_map(|c| {
            let id = c.container_id.as_deref()?;
            // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
            let id = id.split_once("://").map_or(id, |(_, id)| id);
            Some((id.to_string(), c.name.clone()))
        })
        .collect();
    let map = |m: &Option<std::collections::BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    Some((
        uid,
        PodMeta {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            labels: map(&meta.labels),
            annotations: map(&meta.annotations),
            containers,
        },
    ))
}
