//! deploy/: every Kubernetes manifest is a valid object of a recent Kubernetes (strictly: an
//! unknown field fails), kustomization.yaml applies all of them, the agent accepts the
//! configuration the ConfigMap carries with the DaemonSet's own arguments, and the image and the
//! DaemonSet grant the same capabilities.
//!
//! Needs python3 with the PyPI package kubernetes-validate (`cargo xtask setup` installs it);
//! PyYAML, which it depends on, reads the manifests.
#![allow(unused_crate_dependencies, reason = "the harness library uses them")]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use leaktrace_tests::{leaktrace, root, scratch};
use serde_json::Value;

/// The Kubernetes version the manifests are validated against (kubernetes-validate ships its
/// schemas).
const KUBERNETES_VERSION: &str = "1.37.0";

fn manifests_dir() -> PathBuf {
    root().join("deploy/kubernetes")
}

/// The manifests kustomization.yaml applies: every other YAML file of deploy/kubernetes.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(manifests_dir())
        .expect("reading deploy/kubernetes")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    files
}

fn python(args: &[&str]) -> Output {
    Command::new("python3")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running python3 (cargo xtask setup installs it): {e}"))
}

/// The YAML documents of `path`, as JSON (PyYAML reads them).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let output = python(&[
        "-c",
        "import json, sys, yaml\n\
         with open(sys.argv[1]) as f:\n    \
             print(json.dumps([d for d in yaml.safe_load_all(f) if d is not None]))",
        path.to_str().expect("utf-8 path"),
    ]);
    assert!(
        output.status.success(),
        "reading {} as YAML: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python printed JSON")
}

/// The one document of kind `kind` among the manifests.
fn object(kind: &str) -> Value {
    let mut found: Vec<Value> = manifests()
        .iter()
        .flat_map(|p| yaml_documents(p))
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} in deploy/kubernetes");
    found.remove(0)
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object() {
    let files = manifests();
    let output = python(&["-m", "kubernetes_validate", "--version"]);
    assert!(
        output.status.success(),
        "kubernetes-validate is missing: `python3 -m pip install kubernetes-validate` (cargo \
         xtask setup installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut args = vec![
        "-m",
        "kubernetes_validate",
        "--strict",
        "--kubernetes-version",
        KUBERNETES_VERSION,
    ];
    args.extend(files.iter().map(|p| p.to_str().expect("utf-8 path")));
    let output = python(&args);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "kubernetes-validate --strict (Kubernetes {KUBERNETES_VERSION}) rejects deploy/kubernetes:\n{report}"
    );
    // Every object was checked against a schema: none was passed over as unknown.
    let objects: usize = files.iter().map(|p| yaml_documents(p).len()).sum();
    let passed = report.lines().filter(|l| l.contains(" passed ")).count();
    assert_eq!(passed, objects, "{report}");
}

#[test]
fn kustomization_applies_every_manifest() {
    let kustomization = yaml_documents(&manifests_dir().join("kustomization.yaml"));
    let mut resources: Vec<String> = kustomization[0]["resources"]
        .as_array()
        .expect("resources: [...]")
        .iter()
        .map(|r| r.as_str().expect("a file name").to_string())
        .collect();
    resources.sort();
    let files: Vec<String> = manifests()
        .iter()
        .map(|p| {
            p.file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(resources, files, "kustomization.yaml resources vs files");
}

/// The agent's container in the DaemonSet.
fn agent_container(daemonset: &Value) -> &Value {
    let containers = daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers[]");
    assert_eq!(containers.len(), 1);
    &containers[0]
}

#[test]
fn the_agent_accepts_the_configmap_with_the_daemonsets_arguments() {
    let configmap = object("ConfigMap");
    let daemonset = object("DaemonSet");
    let container = agent_container(&daemonset);

    // The DaemonSet's --config names agent.toml in the ConfigMap's volume.
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args[]")
        .iter()
        .map(|a| a.as_str().expect("a string"))
        .collect();
    let config_at = args
        .iter()
        .position(|a| *a == "--config")
        .expect("the DaemonSet passes --config");
    let config_path = Path::new(args[config_at + 1]);
    let key = config_path
        .file_name()
        .expect("a file name")
        .to_str()
        .expect("utf-8");
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts[]")
        .iter()
        .find(|m| {
            Some(Path::new(m["mountPath"].as_str().expect("mountPath"))) == config_path.parent()
        })
        .expect("the config file's directory is mounted");
    let volume = daemonset["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes[]")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    let toml = configmap["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("the ConfigMap has no {key}"));

    // `leaktrace <the DaemonSet's args> --check`, with the file where the test can write it.
    let file = scratch("deploy_configmap").join(key);
    fs::write(&file, toml).expect("writing the configuration");
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args[config_at + 1] = file.to_str().expect("utf-8 path").to_string();
    let output = leaktrace()
        .args(&args)
        .arg("--check")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("NODE_NAME", "test-node")
        .output()
        .expect("running leaktrace");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "leaktrace {} --check rejects the ConfigMap's agent.toml:\n{stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("0.0.0.0:9464"),
        "the effective settings show the listen address: {stdout}"
    );
}

#[test]
fn the_image_and_the_daemonset_grant_the_same_capabilities() {
    // The Dockerfile's `setcap cap_a,cap_b=ep` line.
    let dockerfile = fs::read_to_string(root().join("deploy/Dockerfile")).expect("Dockerfile");
    let setcap = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .skip_while(|w| *w != "setcap")
        .nth(1)
        .expect("the Dockerfile runs setcap");
    let (caps, flags) = setcap.split_once('=').expect("caps=flags");
    assert_eq!(flags, "ep");
    let mut image: Vec<String> = caps
        .split(',')
        .map(|c| c.trim_start_matches("cap_").to_uppercase())
        .collect();
    image.sort();

    let daemonset = object("DaemonSet");
    let security = &agent_container(&daemonset)["securityContext"];
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut pod: Vec<String> = security["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().expect("a name").to_string())
        .collect();
    pod.sort();
    assert_eq!(image, pod);
    // What tests/tests/privileges.rs shows is needed, and enough.
    assert_eq!(pod, ["BPF", "PERFMON", "SYS_PTRACE"]);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["privileged"], false);
    let pod_security = &daemonset["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    assert_eq!(daemonset["spec"]["template"]["spec"]["hostPID"], true);
}
