//! Issue 14.4 and 14.5: the files in `contrib/` and the `Containerfile` say what lior does, so
//! they cannot rot silently: every metric the Grafana dashboard queries is exported by a running
//! lior; the Kubernetes manifests carry the fields docs/ha.md relies on and their lior config is
//! one lior accepts; the container's command line uses flags `lior serve` has.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{Server, BIN};

fn repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Every `lior_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("lior_") {
        let start = i + at;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Every panel, rows' nested panels included.
fn panels(v: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(p));
    }
    out
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_exported_by_a_running_lior() {
    let dash: serde_json::Value =
        serde_json::from_str(&repo_file("contrib/grafana/lior.json")).expect("valid JSON");
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let mut exprs = Vec::new();
    for p in panels(&dash) {
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("a panel has targets");
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        for t in targets {
            exprs.push(
                t["expr"]
                    .as_str()
                    .expect("a target has an expr")
                    .to_string(),
            );
        }
    }
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(d) = v["definition"].as_str() {
            exprs.push(d.to_string());
        }
    }
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // The panels the issue asks for: rates in and out, acks, queue depths, sessions, commits,
    // store errors, outgoing states.
    for needed in [
        "lior_messages_in_total",
        "lior_messages_received_total",
        "lior_session_acks_out_total",
        "lior_queue_messages",
        "lior_sessions_established_total",
        "lior_group_commits_total",
        "lior_store_poisoned",
        "lior_store_commit_failures_total",
        "lior_outgoing_queues",
    ] {
        assert!(used.contains(needed), "the dashboard shows no {needed}");
    }

    // A running lior with a queue and an outgoing queue, so that the labelled series exist.
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"));
    s.cli(&["queue", "create", "orders"]);
    s.cli(&["send", "DIRECT=OS:.\\private$\\orders", "--body", "x"]);
    s.cli(&["send", "DIRECT=TCP:127.0.0.99\\private$\\x", "--body", "y"]);
    let text = ureq::get(&format!("http://{}/metrics", s.api))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics lior does not export: {missing:?}"
    );
    // The labels the panels group and name series by are on the series.
    for (metric, label) in [
        ("lior_queue_messages", "queue"),
        ("lior_queue_bytes", "queue"),
        ("lior_outgoing_messages", "destination"),
        ("lior_outgoing_messages", "state"),
        ("lior_outgoing_queues", "state"),
        ("lior_shard_connections_accepted_total", "shard"),
    ] {
        let series = format!("{metric}{{");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&series) && l.contains(&format!("{label}=\""))),
            "no {metric} series with a {label} label in:\n{text}"
        );
    }
    assert!(
        text.contains("lior_queue_messages{queue=\"orders\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("lior_outgoing_messages{destination=\"TCP:127.0.0.99\""),
        "{text}"
    );
}

/// The Kubernetes manifests, checked line by line (no YAML crate in the tree; with python3 and
/// PyYAML installed they are also parsed).
#[test]
fn the_kubernetes_manifests_carry_what_docs_ha_relies_on() {
    let files = [
        "configmap.yaml",
        "statefulset.yaml",
        "service.yaml",
        "pdb.yaml",
        "networkpolicy.yaml",
    ];
    let text = |f: &str| repo_file(&format!("contrib/k8s/{f}"));
    for f in files {
        let t = text(f);
        assert!(!t.contains('\t'), "{f}: a tab (YAML indents with spaces)");
        assert!(t.lines().any(|l| l.starts_with("apiVersion: ")), "{f}");
        assert!(t.lines().any(|l| l.starts_with("kind: ")), "{f}");
        for l in t.lines() {
            let indent = l.len() - l.trim_start().len();
            assert!(indent % 2 == 0, "{f}: odd indentation: {l:?}");
        }
    }
    let has = |f: &str, line: &str| {
        assert!(
            text(f).lines().any(|l| l.trim() == line),
            "contrib/k8s/{f} has no line {line:?}"
        )
    };
    has("statefulset.yaml", "kind: StatefulSet");
    has("statefulset.yaml", "replicas: 1");
    has("statefulset.yaml", "volumeClaimTemplates:");
    has("statefulset.yaml", "- ReadWriteOnce");
    has("statefulset.yaml", "storageClassName: longhorn");
    has("statefulset.yaml", "mountPath: /var/lib/lior");
    has("statefulset.yaml", "mountPath: /etc/lior");
    has("statefulset.yaml", "- /etc/lior/lior.toml");
    has("statefulset.yaml", "readinessProbe:");
    has("statefulset.yaml", "livenessProbe:");
    has("statefulset.yaml", "- /usr/local/bin/lior");
    has("statefulset.yaml", "- status");
    has("statefulset.yaml", "containerPort: 1801");
    has("service.yaml", "kind: Service");
    has("service.yaml", "port: 1801");
    has("service.yaml", "type: LoadBalancer");
    has("pdb.yaml", "kind: PodDisruptionBudget");
    has("networkpolicy.yaml", "kind: NetworkPolicy");
    has("configmap.yaml", "kind: ConfigMap");
    // The selector labels match the pod template's.
    for f in files {
        has(f, "app.kubernetes.io/name: lior");
    }

    // The lior.toml of the ConfigMap is a config lior accepts (unknown keys are refused).
    let cm = text("configmap.yaml");
    let toml: String = cm
        .lines()
        .skip_while(|l| l.trim() != "lior.toml: |")
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    assert!(toml.contains("api = \"127.0.0.1:1802\""), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lior.toml");
    std::fs::write(&path, &toml).unwrap();
    let out = Command::new(BIN)
        .args(["config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lior refuses the ConfigMap's lior.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A real parse where the tools exist.
    let parsed = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, yaml\nfor f in sys.argv[1:]:\n    \
             docs = [d for d in yaml.safe_load_all(open(f)) if d]\n    \
             assert docs and all('kind' in d and 'metadata' in d for d in docs), f\n",
        )
        .args(
            files
                .iter()
                .map(|f| format!("{}/contrib/k8s/{f}", env!("CARGO_MANIFEST_DIR"))),
        )
        .output();
    match parsed {
        Ok(o) if o.status.success() => {}
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'yaml'") => {
            eprintln!("\n*** SKIPPED the YAML parse of contrib/k8s: python3 has no PyYAML ***\n")
        }
        Ok(o) => panic!(
            "contrib/k8s does not parse as YAML: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => eprintln!("\n*** SKIPPED the YAML parse of contrib/k8s: no python3 ***\n"),
    }
}

/// The Containerfile is multi-stage, keeps the data directory on a volume, and starts `lior
/// serve` with flags it has. (It is not built in CI: that needs a container runtime.)
#[test]
fn the_containerfile_builds_in_two_stages_and_runs_serve_with_real_flags() {
    let c = repo_file("Containerfile");
    let froms: Vec<&str> = c.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(froms[0].ends_with(" AS build"), "{froms:?}");
    assert!(c.lines().any(|l| l.starts_with("COPY --from=build ")));
    assert!(c
        .lines()
        .any(|l| l.contains("cargo build --release --locked")));
    assert!(c.lines().any(|l| l == "VOLUME [\"/var/lib/lior\"]"));
    assert!(c
        .lines()
        .any(|l| l.starts_with("EXPOSE ") && l.contains("1801")));
    let cmd = c
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("a CMD");
    let args: Vec<String> = serde_json::from_str(cmd).expect("CMD in JSON form");
    assert_eq!(args[0], "serve");
    let help = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag.as_str()), "lior serve has no {flag}");
    }
    // The unit's ExecStart, likewise.
    let unit = repo_file("contrib/lior.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    for flag in exec.split_whitespace().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag), "lior serve has no {flag}");
    }
}
