//! What `deploy/` ships, checked offline with the tools an operator would use: the alert
//! rules with `promtool` (their unit tests in deploy/alerts-test.yaml, one per alert), the
//! dashboard's queries parsed by promtool too, the Kubernetes manifests with
//! `kubernetes-validate --strict`, the systemd unit with `systemd-analyze verify`, and a
//! live agent: its `/metrics` passes `promtool check metrics`, carries every metric the
//! rules and the dashboard name, and it tells systemd READY=1 once it is synced; and the
//! offline image build (`deploy/build-image.sh`) run end to end.
//! `cargo xtask setup` installs the tools (tests/src/deploy_tools.rs). Every test is named
//! `deploy_*`, so `cargo xtask test -p tests -- deploy` runs them all.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

#[path = "../src/deploy_tools.rs"]
#[expect(
    dead_code,
    reason = "setup's constants (the pins, the stamp): this test needs fewer"
)]
mod deploy_tools;

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use tests::{
    framework::{hook::Hook, process::agent_bin},
    harness::Cloud,
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy(file: &str) -> PathBuf {
    workspace().join("deploy").join(file)
}

fn read(file: &str) -> String {
    fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("read deploy/{file}: {e}"))
}

fn promtool() -> Command {
    let bin = Path::new(deploy_tools::PROMTOOL);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask setup`",
        bin.display()
    );
    Command::new(bin)
}

fn venv_bin(tool: &str) -> PathBuf {
    let bin = workspace()
        .join(deploy_tools::VENV_DIR)
        .join("bin")
        .join(tool);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask setup` (it creates the deploy venv)",
        bin.display()
    );
    bin
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `c`, panics with its output unless it succeeds; returns stdout + stderr.
#[track_caller]
fn ok(c: &mut Command) -> String {
    let o = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {c:?}: {e}"));
    let out = text(&o);
    assert!(o.status.success(), "{c:?} failed ({}):\n{out}", o.status);
    out
}

/// The values of `key: VALUE` lines (YAML scalars the files write on one line).
fn values_of(yaml: &str, key: &str) -> BTreeSet<String> {
    yaml.lines()
        .filter_map(|l| {
            let l = l.trim_start().trim_start_matches("- ");
            l.strip_prefix(key)?
                .strip_prefix(':')
                .map(|v| v.trim().to_string())
        })
        .collect()
}

/// Every `dragonflow_*` name in a text, as the metric family a scrape would show it (a
/// histogram's `_bucket`, `_sum` and `_count` series belong to their family).
fn metric_names(s: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = s;
    while let Some(i) = rest.find("dragonflow_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        if name.len() > "dragonflow_".len() {
            out.insert(name.to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// The PromQL expressions of the dashboard's panels, with Grafana's variables replaced as
/// Grafana would for "all agents".
fn dashboard_queries() -> Vec<(String, String)> {
    let dash: serde_json::Value =
        serde_json::from_str(&read("grafana-dashboard.json")).expect("dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "the dashboard has no panels");
    let mut out = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("panel title").to_string();
        let targets = p["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("target expr");
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*");
            out.push((title.clone(), expr));
        }
    }
    out
}

#[test]
fn deploy_alert_rules_pass_their_unit_tests_and_every_alert_has_one() {
    let out = ok(promtool()
        .args(["check", "rules"])
        .arg(deploy("alerts.yaml")));
    assert!(out.contains("SUCCESS"), "promtool check rules:\n{out}");
    let out = ok(promtool()
        .args(["test", "rules"])
        .arg(deploy("alerts-test.yaml")));
    assert!(out.contains("SUCCESS"), "promtool test rules:\n{out}");

    let alerts = values_of(&read("alerts.yaml"), "alert");
    let tested = values_of(&read("alerts-test.yaml"), "alertname");
    assert!(alerts.len() >= 7, "alerts: {alerts:?}");
    let untested: Vec<_> = alerts.difference(&tested).collect();
    assert!(
        untested.is_empty(),
        "alerts without a unit test: {untested:?}"
    );
    let unknown: Vec<_> = tested.difference(&alerts).collect();
    assert!(
        unknown.is_empty(),
        "tests of alerts that do not exist: {unknown:?}"
    );
}

/// The dashboard's queries are valid PromQL: written as recording rules into a temporary
/// rule file, which promtool parses (it has no offline query checker of its own).
#[test]
fn deploy_dashboard_queries_parse() {
    let dir = tempdir("dash");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries().iter().enumerate() {
        let expr = serde_json::to_string(expr).expect("json string is a YAML string");
        rules.push_str(&format!(
            "      # {title}\n      - record: dashboard:query{i}\n        expr: {expr}\n"
        ));
    }
    let file = dir.join("dashboard-rules.yaml");
    fs::write(&file, &rules).expect("write rules");
    let out = ok(promtool().args(["check", "rules"]).arg(&file));
    assert!(out.contains("SUCCESS"), "{out}\n{rules}");
}

#[test]
fn deploy_manifests_validate_strictly() {
    let validate = venv_bin("kubernetes-validate");
    let out = ok(Command::new(&validate)
        .arg("--strict")
        .arg(deploy("daemonset.yaml")));
    assert!(
        out.contains("passed") && !out.contains("WARN"),
        "daemonset.yaml: {out}"
    );

    // The validator does catch a mistake (a misspelt field), so "passed" above means
    // something.
    let dir = tempdir("k8s");
    let bad = dir.join("daemonset.yaml");
    let yaml = read("daemonset.yaml");
    assert!(yaml.contains("      hostNetwork: true\n"));
    fs::write(
        &bad,
        yaml.replace("      hostNetwork: true\n", "      hostNetwerk: true\n"),
    )
    .expect("write");
    let o = Command::new(&validate)
        .arg("--strict")
        .arg(&bad)
        .output()
        .expect("spawn");
    assert!(
        !o.status.success() && text(&o).contains("hostNetwerk"),
        "a misspelt field passed: {}",
        text(&o)
    );

    // The PodMonitor is a custom resource the validator has no schema for; what can go
    // wrong with it is that it scrapes nothing: check it selects the daemonset's pods, on
    // a port they have, at the path the agent serves.
    let python = venv_bin("python");
    let json = ok(Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; \
             print(json.dumps([yaml.safe_load(open(f)) for f in sys.argv[1:]]))",
        ])
        .arg(deploy("daemonset.yaml"))
        .arg(deploy("podmonitor.yaml")));
    let docs: serde_json::Value = serde_json::from_str(&json).expect("json");
    let (ds, pm) = (&docs[0], &docs[1]);
    assert_eq!(pm["kind"], "PodMonitor");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(pm["metadata"]["namespace"], ds["metadata"]["namespace"]);
    let pod_labels = ds["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .expect("pod labels");
    let selector = pm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("PodMonitor matchLabels");
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "selector {k}={v} not on the pods"
        );
    }
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["hostNetwork"], true);
    let agent = &pod["containers"][0];
    assert!(agent["resources"]["requests"].is_object(), "no resources");
    assert_eq!(agent["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/healthz");
    let ports: Vec<&str> = agent["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let endpoints = pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .expect("endpoints");
    assert!(!endpoints.is_empty());
    for e in endpoints {
        let port = e["port"].as_str().expect("endpoint port");
        assert!(
            ports.contains(&port),
            "PodMonitor port {port} not in {ports:?}"
        );
        assert_eq!(e["path"], "/metrics");
    }
}

/// `systemd-analyze verify` on the unit, with `ExecStart` pointing at the agent this test
/// run built (verify insists the binary exists). Any complaint fails: unknown keys and
/// bad values are only warnings (exit 0) to systemd.
#[test]
fn deploy_systemd_unit_verifies() {
    let unit = read("dragonflow-agent.service");
    assert!(unit.contains("\nType=notify\n"), "not Type=notify");
    assert!(unit.contains("ExecStart=/usr/local/bin/dragonflow-agent "));
    let dir = tempdir("unit");
    let file = dir.join("dragonflow-agent.service");
    let agent = agent_bin();
    fs::write(
        &file,
        unit.replace(
            "/usr/local/bin/dragonflow-agent",
            agent.to_str().expect("utf-8 path"),
        ),
    )
    .expect("write unit");
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .expect("systemd-analyze (Debian's systemd) is missing");
    let out = text(&o);
    assert!(
        o.status.success() && out.trim().is_empty(),
        "systemd-analyze verify ({}):\n{out}",
        o.status
    );
}

/// A real agent (the harness's hypervisor namespace, its own etcd) started under a
/// `NOTIFY_SOCKET` as systemd would: READY=1 arrives, and the agent then reports itself
/// synced; its `/metrics` passes promtool's lint and has every metric the alert rules
/// and the dashboard use.
#[test]
fn deploy_live_agent_notifies_systemd_and_its_metrics_pass_promtool() {
    let dir = tempdir("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");

    let mut cloud = Cloud::new();
    let hv = cloud.add_hypervisor("hv1", Hook::Tc);
    cloud.hvs[hv].extra_agent_env.push((
        "NOTIFY_SOCKET".into(),
        socket_path.to_str().expect("utf-8").into(),
    ));
    // Returns once /healthz is 200.
    cloud.start_agent(hv);

    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification from the agent: {e}"));
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        msg.lines().any(|l| l == "READY=1"),
        "notification without READY=1: {msg:?}"
    );
    // The agent sends READY=1 right after it marks itself synced, never before.
    let metrics = cloud.hvs[hv].metrics();
    assert!(
        metrics.contains("\ndragonflow_synced 1\n"),
        "READY=1 before the agent said synced"
    );

    let mut check = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("feed promtool");
    let o = check.wait_with_output().expect("promtool");
    assert!(
        o.status.success(),
        "promtool check metrics ({}):\n{}",
        o.status,
        text(&o)
    );

    let exposed: BTreeSet<String> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .flat_map(|family| {
            // A counter family `x` is exposed as series `x_total`.
            [family.to_string(), format!("{family}_total")]
        })
        .collect();
    let mut used = metric_names(&read("alerts.yaml"));
    for (_, expr) in dashboard_queries() {
        used.extend(metric_names(&expr));
    }
    assert!(
        used.len() >= 10,
        "too few metrics found in the rules: {used:?}"
    );
    let missing: Vec<_> = used.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "the rules or the dashboard use metrics the agent does not expose: {missing:?}"
    );
}

/// The offline image build (deploy/build-image.sh: debootstrap from the apt mirror, umoci,
/// no registry) run end to end with this build's binaries: the archive is an OCI layout
/// whose image has the agent as its entrypoint, and both binaries run inside the image's
/// root filesystem (with the image's libc: a binary needing a newer glibc fails here).
#[test]
fn deploy_image_builds_offline_and_runs_the_agent() {
    let dir = tempdir("image");
    let archive = dir.join("dragonflow-agent.oci.tar");
    let bin = agent_bin();
    ok(Command::new("sh")
        .arg(deploy("build-image.sh"))
        .arg(&archive)
        .arg("test")
        .env("BIN_DIR", bin.parent().expect("bin dir"))
        .env("TMPDIR", &dir.0));
    let layout = dir.join("oci");
    fs::create_dir_all(&layout).expect("layout dir");
    ok(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let index = fs::read_to_string(layout.join("index.json")).expect("index.json");
    assert!(
        index.contains("\"org.opencontainers.image.ref.name\":\"test\""),
        "the layout names the tag: {index}"
    );
    let bundle = dir.join("bundle");
    ok(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle));
    let config: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(bundle.join("config.json")).expect("bundle config.json"),
    )
    .expect("config.json is JSON");
    assert_eq!(
        config["process"]["args"][0], "/usr/local/bin/dragonflow-agent",
        "the image's entrypoint: {config}"
    );
    let rootfs = bundle.join("rootfs");
    for (tool, name) in [("dragonflow-agent", "dragonflow-agent"), ("dfctl", "dfctl")] {
        let out = ok(Command::new("chroot")
            .arg(&rootfs)
            .arg(format!("/usr/local/bin/{tool}"))
            .arg("--version"));
        assert!(out.contains(name), "{tool} --version in the image: {out}");
    }
}

/// A fresh directory under the system temp dir, removed on drop (also when the test
/// panics).
struct TempDir(PathBuf);

impl TempDir {
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("df-deploy-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("create temp dir");
    TempDir(d)
}
