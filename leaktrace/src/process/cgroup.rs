//! Which container and Kubernetes pod a process belongs to, read from `/proc/PID/cgroup`.
//!
//! The agent labels its metrics with pod and container, and the kernel has no better key for
//! them than the cgroup path the container runtime and the kubelet chose. Their conventions, one
//! path component per `/`:
//!
//! | who | path |
//! |---|---|
//! | kubelet, cgroupfs driver | `/kubepods[/burstable\|/besteffort]/pod<uid>/<id>` (CRI-O: `crio-<id>`) |
//! | kubelet, systemd driver | `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/<rt>-<id>.scope` |
//! | kind, nested kubelet | the same with `kubelet-` before each slice, under `/kubelet.slice` |
//! | containerd `systemd_cgroup` with runc in cgroupfs mode | `…/containerd.service/kubepods-<qos>-pod<uid_>.slice:cri-containerd:<id>` |
//! | Docker | `/docker/<id>`, `/system.slice/docker-<id>.scope` |
//! | Podman, nerdctl | `/machine.slice/libpod-<id>.scope`, `/system.slice/nerdctl-<id>.scope` |
//!
//! `<rt>` is `cri-containerd`, `crio` or `docker`; `<uid_>` is the pod UID with `_` for `-`,
//! since systemd reads `-` in a unit name as nesting. Guaranteed pods have no QoS level in
//! their path. A path may go on below the container (crun's `container` subgroup, a
//! `/init.scope` of systemd inside it), may start with `/..` when the reader sits in a cgroup
//! namespace of its own (the kernel renders the path relative to the *reader's* namespace root),
//! and ends with ` (deleted)` for a zombie whose cgroup is already removed.
//!
//! The text is treated as hostile: a container that may write its own cgroup tree (privileged,
//! or delegated) can create sub-cgroups with any names and move itself into them. So the
//! *outermost* pod and the first container inside it win: names made below a pod's real
//! container cannot claim another pod. Only a process that is in no pod at all (a plain Docker
//! container, say) can make itself look like one — and only itself.

use std::{
    fs::File,
    io::{self, Read},
};

use super::ProcessError;

/// [`Placement::runtime`] values: the names Prometheus labels carry, so fixed here.
pub const CONTAINERD: &str = "containerd";
pub const CRIO: &str = "cri-o";
pub const DOCKER: &str = "docker";
pub const PODMAN: &str = "podman";

/// [`Placement::qos`] values: the kubelet's QoS classes, lowercase as in its cgroup names.
pub const GUARANTEED: &str = "guaranteed";
pub const BURSTABLE: &str = "burstable";
pub const BESTEFFORT: &str = "besteffort";

/// Lines looked at: a v1 host has one per hierarchy (about a dozen), a v2 host one.
const MAX_LINES: usize = 128;
/// The kernel refuses to render a cgroup path of `PATH_MAX` (4096) bytes or more; the rest is
/// the hierarchy id, the controller list and ` (deleted)`.
const MAX_LINE: usize = 8192;
/// Bytes [`read`] takes from the file; more than `MAX_LINES` lines of `MAX_LINE` bytes is never
/// looked at anyway.
const MAX_FILE: u64 = 1 << 20;

/// Where a process sits in the cgroup tree, and the container/pod that path names.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Placement {
    /// The cgroup path the identity was read from: the v2 path, or on v1 the hierarchy whose
    /// path names the most (container and pod, then either, then a runtime), else the first
    /// non-root one. Empty when the text has no cgroup line at all.
    pub path: String,
    /// [`CONTAINERD`], [`CRIO`], [`DOCKER`] or [`PODMAN`]; `None` when the path names no
    /// runtime (a plain host process, a pod-level cgroup, or the cgroupfs driver's bare
    /// `pod<uid>/<id>`, which does not say which runtime made it).
    pub runtime: Option<&'static str>,
    /// The full container id: 64 lowercase hex digits, the only form runtimes write into cgroup
    /// names. `None` for host processes, pod-level cgroups and container monitors (CRI-O's and
    /// Podman's `conmon`, which run beside the container, not in it).
    pub container_id: Option<String>,
    /// The Kubernetes pod UID, dashed (`8-4-4-4-12` lowercase hex) as the API server shows it.
    /// A static pod's UID is the kubelet's MD5 of its manifest, 32 hex digits without dashes,
    /// and is kept as such (the API server's mirror pod carries it in its
    /// `kubernetes.io/config.mirror` annotation).
    pub pod_uid: Option<String>,
    /// [`GUARANTEED`], [`BURSTABLE`] or [`BESTEFFORT`] under the kubelet's `kubepods` tree;
    /// `None` elsewhere.
    pub qos: Option<&'static str>,
}

impl Placement {
    /// Whether the path names a container, a container monitor or a pod: false for host
    /// processes, which the agent labels with the node alone.
    pub fn is_contained(&self) -> bool {
        self.runtime.is_some() || self.container_id.is_some() || self.pod_uid.is_some()
    }
}

/// Parses the text of /proc/PID/cgroup (v1 "hier-id:controllers:path" lines, or the v2 "0::path"
/// line, or hybrid mixtures). Never fails: lines that do not parse are skipped, and text with no
/// line that parses gives the default (empty) placement.
pub fn parse(text: &str) -> Placement {
    // Not the v2 line by position: on a hybrid host it names only what systemd put there (e.g.
    // `containerd.service` for a Docker container that the v1 hierarchies place precisely).
    let mut best: Option<(Rank, &str, Identity<'_>)> = None;
    for line in text.lines().take(MAX_LINES) {
        let Some(path) = line_path(line) else {
            continue;
        };
        let identity = identify(path);
        let rank = identity.rank(path);
        if best.as_ref().is_none_or(|(top, ..)| rank > *top) {
            best = Some((rank, path, identity));
        }
    }
    best.map(|(_, path, identity)| identity.placement(path))
        .unwrap_or_default()
}

/// Reads and parses `/proc/PID/cgroup`. A process that is gone (or never was) is
/// [`ProcessError::NoSuchProcess`], so that the agent can drop it quietly.
pub fn read(pid: u32) -> Result<Placement, ProcessError> {
    if pid == 0 {
        return Err(ProcessError::NoSuchProcess(pid));
    }
    let mut text = Vec::new();
    File::open(format!("/proc/{pid}/cgroup"))
        .and_then(|file| file.take(MAX_FILE).read_to_end(&mut text))
        .map_err(|source| {
            // ESRCH: the process exited between the open and the read.
            if source.kind() == io::ErrorKind::NotFound
                || source.raw_os_error() == Some(libc::ESRCH)
            {
                ProcessError::NoSuchProcess(pid)
            } else {
                ProcessError::Unreadable {
                    pid,
                    what: "cgroup",
                    source,
                }
            }
        })?;
    Ok(parse(&String::from_utf8_lossy(&text)))
}

/// The path of one line, without the ` (deleted)` the kernel appends for a removed cgroup.
fn line_path(line: &str) -> Option<&str> {
    if line.len() > MAX_LINE {
        return None;
    }
    // The path comes last and may itself contain `:` (see `identify`).
    let mut fields = line.splitn(3, ':');
    let hierarchy = fields.next()?;
    let _controllers = fields.next()?;
    let path = fields.next()?;
    if hierarchy.is_empty() || !hierarchy.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    path.starts_with('/').then_some(path)
}

/// What one path names, borrowed from it.
#[derive(Default)]
struct Identity<'a> {
    pod: Option<Pod<'a>>,
    container: Option<Container<'a>>,
}

struct Pod<'a> {
    /// As written: dashes, underscores, or a static pod's 32 digits.
    uid: &'a str,
    qos: Option<&'static str>,
}

struct Container<'a> {
    runtime: Option<&'static str>,
    /// `None` for a monitor (`conmon`).
    id: Option<&'a str>,
}

/// How much a line's path names, compared field by field: container and pod, container, pod,
/// runtime, not the root.
type Rank = (bool, bool, bool, bool, bool);

impl<'a> Identity<'a> {
    fn id(&self) -> Option<&'a str> {
        self.container.as_ref().and_then(|c| c.id)
    }

    fn runtime(&self) -> Option<&'static str> {
        self.container.as_ref().and_then(|c| c.runtime)
    }

    fn rank(&self, path: &str) -> Rank {
        let (id, pod) = (self.id().is_some(), self.pod.is_some());
        (id && pod, id, pod, self.runtime().is_some(), path != "/")
    }

    fn placement(&self, path: &str) -> Placement {
        Placement {
            path: path.to_owned(),
            runtime: self.runtime(),
            container_id: self.id().map(str::to_owned),
            pod_uid: self.pod.as_ref().map(|pod| pod.uid.replace('_', "-")),
            qos: self.pod.as_ref().and_then(|pod| pod.qos),
        }
    }
}

/// Reads a path from the root down: the outermost pod, then the first container below it (or
/// the first container anywhere, outside pods). A container above a pod is a node that the
/// kubelet runs in (kind, minikube), not the pod's container.
fn identify(path: &str) -> Identity<'_> {
    let mut identity = Identity::default();
    let (mut parent, mut grandparent) = ("", "");
    for component in path.split('/').filter(|c| !c.is_empty()) {
        // runc given a systemd-style `slice:prefix:name` cgroupsPath while in cgroupfs mode
        // takes it literally, as one directory name.
        let (own, joined) = match component.split_once(':') {
            Some((slice, rest)) => (slice, rest.split_once(':')),
            None => (component, None),
        };
        if identity.pod.is_none()
            && let Some(found) = pod(own, parent, grandparent)
        {
            identity.pod = Some(found);
            identity.container = None;
        }
        if identity.container.is_none() {
            identity.container = match joined {
                Some((prefix, name)) => prefixed(prefix, name),
                None => container(own, parent),
            };
        }
        (grandparent, parent) = (parent, own);
    }
    identity
}

/// A pod's cgroup: `pod<uid>` (cgroupfs driver) or `<parent slice>-pod<uid>.slice` (systemd).
fn pod<'a>(component: &'a str, parent: &str, grandparent: &str) -> Option<Pod<'a>> {
    if let Some(uid) = component.strip_prefix("pod") {
        // `..` above the QoS level: the reader's cgroup namespace hides the `kubepods` root.
        let under_kubepods = grandparent == "kubepods" || grandparent == "..";
        let qos = match parent {
            "kubepods" => Some(GUARANTEED),
            "burstable" if under_kubepods => Some(BURSTABLE),
            "besteffort" if under_kubepods => Some(BESTEFFORT),
            _ => None,
        };
        return is_pod_uid(uid).then_some(Pod { uid, qos });
    }
    let (slice, uid) = component.strip_suffix(".slice")?.rsplit_once("-pod")?;
    if !is_pod_uid(uid) {
        return None;
    }
    // `kubepods`, `kubepods-burstable`, `kubelet-kubepods-besteffort`, ...
    let is_kubepods = |s: &str| s == "kubepods" || s.ends_with("-kubepods");
    let qos = if is_kubepods(slice) {
        Some(GUARANTEED)
    } else if slice.strip_suffix("-burstable").is_some_and(is_kubepods) {
        Some(BURSTABLE)
    } else if slice.strip_suffix("-besteffort").is_some_and(is_kubepods) {
        Some(BESTEFFORT)
    } else {
        None
    };
    Some(Pod { uid, qos })
}

/// The name prefixes runtimes give a container's cgroup (`<prefix>-<id>[.scope]`), the runtime
/// each names, and whether the cgroup holds the container's monitor rather than the container.
/// Longer prefixes first: `crio-conmon` before `crio`.
const PREFIXES: [(&str, &str, bool); 7] = [
    ("cri-containerd", CONTAINERD, false),
    ("crio-conmon", CRIO, true),
    ("crio", CRIO, false),
    ("docker", DOCKER, false),
    ("libpod-conmon", PODMAN, true),
    ("libpod", PODMAN, false),
    ("nerdctl", CONTAINERD, false),
];

/// A container's cgroup: `<prefix>-<id>[.scope]`, or a bare id (cgroupfs drivers), which names
/// its runtime only under Docker's own `/docker`.
fn container<'a>(component: &'a str, parent: &str) -> Option<Container<'a>> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    if is_container_id(name) {
        return Some(Container {
            runtime: (parent == "docker").then_some(DOCKER),
            id: Some(name),
        });
    }
    PREFIXES.iter().find_map(|(prefix, ..)| {
        let id = name.strip_prefix(prefix)?.strip_prefix('-')?;
        prefixed(prefix, id)
    })
}

/// A container named by a runtime prefix and an id, if both are ones we know.
fn prefixed<'a>(prefix: &str, id: &'a str) -> Option<Container<'a>> {
    let &(_, runtime, monitor) = PREFIXES.iter().find(|(p, ..)| *p == prefix)?;
    is_container_id(id).then_some(Container {
        runtime: Some(runtime),
        id: (!monitor).then_some(id),
    })
}

/// 64 lowercase hex digits: the only id form containerd, CRI-O, Docker and Podman use. Shorter
/// hex (Docker's 12-digit short ids, ECS task ids) never appears as a container's cgroup name,
/// and accepting it would take hex-looking names of anything else for containers.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(is_lower_hex)
}

/// A UUID, its four separators all `-` (cgroupfs) or all `_` (systemd), or 32 hex digits (a
/// static pod's UID, which the kubelet derives from an MD5 hash of its manifest).
fn is_pod_uid(s: &str) -> bool {
    let bytes = s.as_bytes();
    match bytes.len() {
        32 => bytes.iter().copied().all(is_lower_hex),
        36 => {
            let separator = bytes[8];
            (separator == b'-' || separator == b'_')
                && bytes.iter().enumerate().all(|(i, &b)| match i {
                    8 | 13 | 18 | 23 => b == separator,
                    _ => is_lower_hex(b),
                })
        }
        _ => false,
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const CID: &str = "60a2123161892aa51dcbdd102779dc5fbf73e434faed4c1c17c08cee800f5c40";
    const UID: &str = "8570465b-b2d5-40ab-87a5-87472e6effa6";

    fn expect(
        runtime: Option<&'static str>,
        container_id: Option<&str>,
        pod_uid: Option<&str>,
        qos: Option<&'static str>,
    ) -> impl Fn(&str) -> Placement {
        move |path| Placement {
            path: path.to_owned(),
            runtime,
            container_id: container_id.map(str::to_owned),
            pod_uid: pod_uid.map(str::to_owned),
            qos,
        }
    }

    #[test]
    fn cgroupfs_driver_v1_burstable() {
        let path = "/kubepods/burstable/pod0833c2ca-945f-4107-bd01-e0e8613b84c4/d04b8bca1d2f6f049dd3b6fcfc06c635b34fd8ac4988319768a8c1e57779531a";
        let text = format!(
            "12:rdma:/\n11:pids:{path}\n10:cpu,cpuacct:{path}\n9:memory:{path}\n\
             8:devices:{path}\n7:freezer:{path}\n6:net_cls,net_prio:{path}\n\
             5:cpuset:{path}\n4:blkio:{path}\n3:perf_event:{path}\n2:hugetlb:{path}\n\
             1:name=systemd:{path}\n"
        );
        assert_eq!(
            parse(&text),
            expect(
                None,
                Some("d04b8bca1d2f6f049dd3b6fcfc06c635b34fd8ac4988319768a8c1e57779531a"),
                Some("0833c2ca-945f-4107-bd01-e0e8613b84c4"),
                Some(BURSTABLE)
            )(path)
        );
    }

    #[test]
    fn cgroupfs_driver_v2_besteffort() {
        let path = format!("/kubepods/besteffort/pod{UID}/{CID}");
        assert_eq!(
            parse(&format!("0::{path}\n")),
            expect(None, Some(CID), Some(UID), Some(BESTEFFORT))(&path)
        );
    }

    #[test]
    fn cgroupfs_driver_guaranteed_v1_and_v2() {
        let path = format!("/kubepods/pod{UID}/{CID}");
        let want = expect(None, Some(CID), Some(UID), Some(GUARANTEED))(&path);
        assert_eq!(parse(&format!("0::{path}\n")), want);
        assert_eq!(
            parse(&format!(
                "3:memory:{path}\n2:cpu,cpuacct:{path}\n1:name=systemd:{path}\n"
            )),
            want
        );
    }

    #[test]
    fn cgroupfs_driver_crio() {
        let path = format!("/kubepods/burstable/pod{UID}/crio-{CID}");
        assert_eq!(
            parse(&format!("0::{path}\n")),
            expect(Some(CRIO), Some(CID), Some(UID), Some(BURSTABLE))(&path)
        );
    }

    #[test]
    fn systemd_driver_v2_containerd() {
        let path = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda280e2b7_3d14_4468_851f_647a08b09205.slice/cri-containerd-da881974f63da41b3a543e4d543c94e935ed21b8ea9d5567298e9a120280b9e8.scope";
        assert_eq!(
            parse(&format!("0::{path}\n")),
            expect(
                Some(CONTAINERD),
                Some("da881974f63da41b3a543e4d543c94e935ed21b8ea9d5567298e9a120280b9e8"),
                Some("a280e2b7-3d14-4468-851f-647a08b09205"),
                Some(BURSTABLE)
            )(path)
        );
    }

    #[test]
    fn systemd_driver_v1_crio_with_root_hierarchies() {
        let uid_ = UID.replace('-', "_");
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{CID}.scope"
        );
        let text = format!(
            "13:freezer:{path}\n12:cpuset:{path}\n11:files:/\n10:hugetlb:{path}\n9:misc:/\n\
             8:memory:{path}\n7:pids:{path}\n1:name=systemd:{path}\n"
        );
        assert_eq!(
            parse(&text),
            expect(Some(CRIO), Some(CID), Some(UID), Some(BESTEFFORT))(&path)
        );
    }

    #[test]
    fn systemd_driver_guaranteed_docker() {
        // dockershim or cri-dockerd with the systemd driver.
        let path = format!(
            "/kubepods.slice/kubepods-pod{}.slice/docker-{CID}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(
            parse(&format!("0::{path}\n")),
            expect(Some(DOCKER), Some(CID), Some(UID), Some(GUARANTEED))(&path)
        );
    }

    #[test]
    fn crun_container_subgroup_and_inner_systemd() {
        let uid_ = UID.replace('-', "_");
        let want = expect(Some(CRIO), Some(CID), Some(UID), Some(BURSTABLE));
        for leaf in ["container", "init.scope"] {
            let path = format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{CID}.scope/{leaf}"
            );
            assert_eq!(parse(&format!("0::{path}\n")), want(&path));
        }
    }

    #[test]
    fn kind_node_seen_from_inside_and_from_the_host() {
        let uid_ = UID.replace('-', "_");
        let inside = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice/cri-containerd-{CID}.scope"
        );
        let want = expect(Some(CONTAINERD), Some(CID), Some(UID), Some(BESTEFFORT));
        assert_eq!(parse(&format!("0::{inside}\n")), want(&inside));
        // The node is itself a Docker container: above the pod, so not the pod's container.
        let host = format!(
            "/system.slice/docker-bfc7dd6b5f2b425c313c72d00d8f7e723d8354da887803ceac2e3b69a2cba104.scope{inside}"
        );
        assert_eq!(parse(&format!("0::{host}\n")), want(&host));

        let guaranteed = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{uid_}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(parse(&format!("0::{guaranteed}\n")).qos, Some(GUARANTEED));
    }

    #[test]
    fn minikube_docker_driver_v1() {
        let path = format!(
            "/docker/237139d9371848a7a398672a774060baf4f213965644d9451debbd7ad00cc30e/kubepods/besteffort/pod{UID}/{CID}"
        );
        assert_eq!(
            parse(&format!("4:memory:{path}\n1:name=systemd:{path}\n")),
            expect(None, Some(CID), Some(UID), Some(BESTEFFORT))(&path)
        );
    }

    #[test]
    fn containerd_service_with_runc_in_cgroupfs_mode() {
        let uid_ = UID.replace('-', "_");
        let path = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{uid_}.slice:cri-containerd:{CID}"
        );
        let text = format!(
            "11:memory:{path}\n10:cpu,cpuacct:{path}\n1:name=systemd:{path}\n0::/system.slice/containerd.service\n"
        );
        assert_eq!(
            parse(&text),
            expect(Some(CONTAINERD), Some(CID), Some(UID), Some(BURSTABLE))(&path)
        );
        // Pod-level processes of the same setup sit in a prefixed slice of their own.
        let pod_level =
            format!("/system.slice/containerd.service/kubepods-besteffort-pod{uid_}.slice");
        assert_eq!(
            parse(&format!("0::{pod_level}\n")),
            expect(None, None, Some(UID), Some(BESTEFFORT))(&pod_level)
        );
    }

    #[test]
    fn static_pod_uid_is_an_md5_without_dashes() {
        // The kubelet's UID for a pod read from a manifest file: 32 hex digits.
        let path = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod36b6d6be73b1065af369b3985edafa09.slice:cri-containerd:{CID}"
        );
        let placement = parse(&format!("3:memory:{path}\n"));
        assert_eq!(
            placement.pod_uid.as_deref(),
            Some("36b6d6be73b1065af369b3985edafa09")
        );
        assert_eq!(placement.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn docker_without_kubernetes() {
        let v1 = format!("/docker/{CID}");
        let text = format!(
            "12:net_cls,net_prio:{v1}\n11:freezer:{v1}\n10:rdma:/\n9:blkio:{v1}\n\
             8:memory:{v1}\n2:cpu,cpuacct:{v1}\n1:name=systemd:{v1}\n0::/system.slice/containerd.service\n"
        );
        assert_eq!(
            parse(&text),
            expect(Some(DOCKER), Some(CID), None, None)(&v1)
        );

        let v2 = format!("/system.slice/docker-{CID}.scope");
        assert_eq!(
            parse(&format!("0::{v2}\n")),
            expect(Some(DOCKER), Some(CID), None, None)(&v2)
        );
    }

    #[test]
    fn podman_and_nerdctl() {
        for (path, runtime, id) in [
            (
                format!("/machine.slice/libpod-{CID}.scope"),
                PODMAN,
                Some(CID),
            ),
            (
                format!("/machine.slice/libpod-conmon-{CID}.scope"),
                PODMAN,
                None,
            ),
            (format!("/libpod_parent/libpod-{CID}"), PODMAN, Some(CID)),
            (
                format!("/system.slice/nerdctl-{CID}.scope"),
                CONTAINERD,
                Some(CID),
            ),
        ] {
            assert_eq!(
                parse(&format!("0::{path}\n")),
                expect(Some(runtime), id, None, None)(&path)
            );
        }
    }

    #[test]
    fn crio_conmon_is_the_monitor_not_a_container() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-conmon-{CID}.scope",
            UID.replace('-', "_")
        );
        let placement = parse(&format!("0::{path}\n"));
        assert_eq!(
            placement,
            expect(Some(CRIO), None, Some(UID), Some(BURSTABLE))(&path)
        );
        assert!(placement.is_contained());
    }

    #[test]
    fn plain_hosts() {
        for (text, path) in [
            (
                "0::/user.slice/user-0.slice/session-3.scope\n",
                "/user.slice/user-0.slice/session-3.scope",
            ),
            ("0::/\n", "/"),
            ("0::/init.scope\n", "/init.scope"),
            (
                "0::/system.slice/containerd.service\n",
                "/system.slice/containerd.service",
            ),
            (
                "0::/system.slice/docker.service\n",
                "/system.slice/docker.service",
            ),
            // v1: all hierarchies at the root but one.
            (
                "3:cpuset:/\n2:memory:/\n1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n",
                "/user.slice/user-1000.slice/session-2.scope",
            ),
        ] {
            let placement = parse(text);
            assert_eq!(placement, expect(None, None, None, None)(path), "{text}");
            assert!(!placement.is_contained());
        }
    }

    #[test]
    fn pod_level_cgroup_names_the_pod_only() {
        let systemd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            UID.replace('-', "_")
        );
        assert_eq!(
            parse(&format!("0::{systemd}\n")),
            expect(None, None, Some(UID), Some(BESTEFFORT))(&systemd)
        );
        let cgroupfs = format!("/kubepods/pod{UID}");
        assert_eq!(
            parse(&format!("0::{cgroupfs}\n")),
            expect(None, None, Some(UID), Some(GUARANTEED))(&cgroupfs)
        );
    }

    #[test]
    fn pause_container_is_the_sandbox_container() {
        // The pod sandbox has a cgroup of its own, named by the sandbox id.
        let sandbox = "f33c9d0b8c4f4d2607fa1e9fd2c1762b57c1c35d59f9c310122a45a1c06cf5e3";
        let path = format!("/kubepods/besteffort/pod{UID}/{sandbox}");
        assert_eq!(
            parse(&format!("0::{path}\n")).container_id.as_deref(),
            Some(sandbox)
        );
    }

    #[test]
    fn reader_in_its_own_cgroup_namespace() {
        let uid_ = UID.replace('-', "_");
        let path = format!("/../../kubepods-besteffort-pod{uid_}.slice/cri-containerd-{CID}.scope");
        assert_eq!(
            parse(&format!("0::{path}\n")),
            expect(Some(CONTAINERD), Some(CID), Some(UID), Some(BESTEFFORT))(&path)
        );
        let cgroupfs = format!("/../../../burstable/pod{UID}/{CID}");
        assert_eq!(parse(&format!("0::{cgroupfs}\n")).qos, Some(BURSTABLE));
    }

    #[test]
    fn zombie_in_a_removed_cgroup() {
        let path = format!("/system.slice/docker-{CID}.scope");
        assert_eq!(
            parse(&format!("0::{path} (deleted)\n")),
            expect(Some(DOCKER), Some(CID), None, None)(&path)
        );
    }

    #[test]
    fn names_made_below_a_container_cannot_claim_another_pod() {
        let other_uid = "dfc23456_b128_448f_aee9_f818691d5a90";
        let other_cid = "57edf4d98fc870c677be719e3f703993a4c578a5d6daf3f9d28875936c431b6f";
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope/kubepods-pod{other_uid}.slice/docker-{other_cid}.scope",
            UID.replace('-', "_")
        );
        assert_eq!(
            parse(&format!("0::{path}\n")),
            expect(Some(CONTAINERD), Some(CID), Some(UID), Some(BURSTABLE))(&path)
        );
    }

    #[test]
    fn near_misses_are_not_ids() {
        let short = &CID[..12];
        let upper = CID.to_uppercase();
        for path in [
            format!("/docker/{short}"),
            format!("/docker/{upper}"),
            format!("/docker/{}", &CID[..63]),
            format!("/docker/{CID}0"),
            format!("/system.slice/docker-{short}.scope"),
            format!("/system.slice/podman-{CID}.scope"),
            "/system.slice/docker-compose@web.service".to_owned(),
            "/kubepods/burstable/pod1234".to_owned(),
            format!("/kubepods/burstable/pod{}", UID.to_uppercase()),
            format!("/kubepods/burstable/pod{}", &UID[1..]),
            "/kubepods/burstable/pod8570465b-b2d5_40ab-87a5-87472e6effa6".to_owned(),
            "/kubepods.slice/kubepods-pod.slice".to_owned(),
        ] {
            let placement = parse(&format!("0::{path}\n"));
            assert_eq!(placement.container_id, None, "{path}");
            assert_eq!(placement.pod_uid, None, "{path}");
            assert_eq!(placement.path, path);
        }
    }

    #[test]
    fn malformed_text() {
        for text in [
            "",
            "\n\n",
            "no colons",
            "0:",
            "x::/docker/abc",
            "0::relative/path",
            ":::",
            "0::",
        ] {
            assert_eq!(parse(text), Placement::default(), "{text:?}");
        }
        // Colons in the path are kept: only the first two separate fields.
        let path = format!("/a:b/docker-{CID}.scope");
        assert_eq!(parse(&format!("0::{path}")).path, path);
        // Lines past the first `MAX_LINES` are not looked at.
        let many = format!("{}0::/docker/{CID}\n", "1:memory:/\n".repeat(MAX_LINES));
        assert_eq!(parse(&many).container_id, None);
        // Over-long lines are skipped, the rest still read.
        let long = format!("1:memory:/{}\n0::/docker/{CID}\n", "a".repeat(MAX_LINE));
        assert_eq!(parse(&long).container_id.as_deref(), Some(CID));
    }

    #[test]
    fn reads_this_process() {
        let placement = read(std::process::id()).expect("own cgroup file is readable");
        assert!(placement.path.starts_with('/'));
        assert!(matches!(read(0), Err(ProcessError::NoSuchProcess(0))));
    }

    fn check_well_formed(placement: &Placement) -> Result<(), TestCaseError> {
        if let Some(id) = &placement.container_id {
            prop_assert!(is_container_id(id));
            prop_assert!(placement.path.contains(id.as_str()));
        }
        if let Some(uid) = &placement.pod_uid {
            prop_assert!(is_pod_uid(uid) && !uid.contains('_'), "{uid}");
        }
        if placement.qos.is_some() {
            prop_assert!(placement.pod_uid.is_some());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn junk_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            check_well_formed(&parse(&String::from_utf8_lossy(&bytes)))?;
        }

        #[test]
        fn near_miss_paths_give_well_formed_answers(
            lines in proptest::collection::vec(
                "[0-9]{1,2}:[a-z=,]{0,10}:(/(kubepods|burstable|besteffort|docker|\\.\\.|pod|kubepods-pod|kubepods-burstable-pod|cri-containerd-|crio-|crio-conmon-|[0-9a-f]{8}|[-_]|:|\\.scope|\\.slice|[0-9a-f]{60}|[0-9a-f]{64}|[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}){0,6}){0,6}( \\(deleted\\))?",
                0..6,
            ),
        ) {
            check_well_formed(&parse(&lines.join("\n")))?;
        }

        #[test]
        fn generated_layouts_are_recognised(
            uid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            cid in "[0-9a-f]{64}",
            qos in 0..3usize,
            layout in 0..4usize,
            v1 in any::<bool>(),
        ) {
            let want_qos = [GUARANTEED, BURSTABLE, BESTEFFORT][qos];
            let uid_ = uid.replace('-', "_");
            let slice = match want_qos { GUARANTEED => String::new(), q => format!("-{q}") };
            let path = match layout {
                0 => match want_qos {
                    GUARANTEED => format!("/kubepods/pod{uid}/{cid}"),
                    q => format!("/kubepods/{q}/pod{uid}/{cid}"),
                },
                1 => format!("/kubepods.slice/kubepods{slice}.slice/kubepods{slice}-pod{uid_}.slice/cri-containerd-{cid}.scope"),
                2 => format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods{slice}.slice/kubelet-kubepods{slice}-pod{uid_}.slice/crio-{cid}.scope"),
                _ => format!("/system.slice/containerd.service/kubepods{slice}-pod{uid_}.slice:cri-containerd:{cid}"),
            };
            let text = if v1 {
                format!("5:rdma:/\n4:memory:{path}\n3:cpu,cpuacct:{path}\n1:name=systemd:{path}\n0::/\n")
            } else {
                format!("0::{path}\n")
            };
            let placement = parse(&text);
            prop_assert_eq!(placement.path, path);
            prop_assert_eq!(placement.container_id, Some(cid));
            prop_assert_eq!(placement.pod_uid, Some(uid));
            prop_assert_eq!(placement.qos, Some(want_qos));
        }
    }
}
