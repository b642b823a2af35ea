//! The deployment files: every Kubernetes manifest against Kubernetes' schemas
//! (`kubernetes-validate`), the KEDA objects against KEDA's documented fields, the numbers the
//! manifests must agree on, the alerting rules with `promtool`, and the Grafana dashboard and
//! the alerts against the figures `/metrics` serves. The tools come from `scripts/tools`
//! (`scripts/test` puts them on PATH).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use provisioner_shared::db::figures;
use provisioner_tests::{TestApp, batches, fixtures};
use serde_json::{Value, json};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn root(path: &str) -> PathBuf {
    Path::new(ROOT).join(path)
}

/// A tool from PATH; the test fails with how to get it.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{name} is not on PATH: use scripts/test, or PATH=\"$(scripts/tools):$PATH\"")
        })
}

/// Runs `program` with `args`: (success, stdout and stderr).
fn run(program: &Path, args: &[&str], dir: Option<&Path>) -> (bool, String) {
    let mut command = provisioner_tests::process::tool(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command.output().expect("the tool runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Every YAML document of `path`, as JSON (read by the PyYAML that kubernetes-validate brings).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let python = tool("kubernetes-validate").with_file_name("python3");
    let (ok, out) = run(
        &python,
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
            path.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{}: {out}", path.display());
    serde_json::from_str(&out).unwrap()
}

/// The files the kustomization lists, as (file name, documents).
fn manifests() -> Vec<(String, Vec<Value>)> {
    let kustomization = &yaml_documents(&root("deploy/k8s/kustomization.yaml"))[0];
    kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let name = r.as_str().unwrap().to_owned();
            let docs = yaml_documents(&root(&format!("deploy/k8s/{name}")));
            (name, docs)
        })
        .collect()
}

/// Every document of the base, in one list.
fn objects() -> Vec<Value> {
    manifests().into_iter().flat_map(|(_, docs)| docs).collect()
}

pub(crate) fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Kubernetes versions the manifests are checked against: the oldest and newest that
/// kubernetes-validate 1.37 knows, and those between.
const KUBERNETES_VERSIONS: [&str; 8] = [
    "1.30", "1.31", "1.32", "1.33", "1.34", "1.35", "1.36", "1.37",
];

/// kubernetes-validate in strict mode (unknown fields are errors) on `files`, for `version`.
fn kubernetes_validate(version: &str, files: &[PathBuf]) -> (bool, String) {
    let mut args = vec!["--strict", "-k", version];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    run(&tool("kubernetes-validate"), &args, None)
}

#[test]
fn the_kustomization_lists_every_manifest_and_each_passes_kubernetes_schemas() {
    let listed: BTreeSet<String> = manifests().into_iter().map(|(name, _)| name).collect();
    let present: BTreeSet<String> = std::fs::read_dir(root("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml lists exactly the manifests"
    );

    let files: Vec<PathBuf> = listed
        .iter()
        .map(|n| root(&format!("deploy/k8s/{n}")))
        .collect();
    let core = objects()
        .iter()
        .filter(|o| o["apiVersion"] != "keda.sh/v1alpha1")
        .count();
    for version in KUBERNETES_VERSIONS {
        let (ok, out) = kubernetes_validate(version, &files);
        assert!(ok && !out.contains("ERROR"), "Kubernetes {version}:\n{out}");
        assert_eq!(
            out.matches(" passed for resource ").count(),
            core,
            "every core object is checked against {version}:\n{out}"
        );
        // Only KEDA's custom resources have no schema here (they are checked below).
        for line in out.lines().filter(|l| l.starts_with("WARN")) {
            assert!(line.contains("api version keda.sh/v1alpha1"), "{line}");
        }
    }

    // The validator does refuse an unknown field, and a wrong type.
    let worker = object(&objects(), "Deployment", "provisioner-worker").clone();
    let mut unknown = worker.clone();
    unknown["spec"]["template"]["spec"]["terminationGracePeriod"] = json!(330);
    let mut mistyped = worker;
    mistyped["spec"]["revisionHistoryLimit"] = json!("five");
    for (broken, needle) in [(unknown, "terminationGracePeriod"), (mistyped, "'five'")] {
        let path = std::env::temp_dir().join(format!("broken-{}.json", std::process::id()));
        std::fs::write(&path, broken.to_string()).unwrap();
        let (ok, out) = kubernetes_validate("1.37", std::slice::from_ref(&path));
        std::fs::remove_file(&path).unwrap();
        assert!(!ok && out.contains(needle), "{out}");
    }
}

#[path = "deploy/keda.rs"]
mod keda;

#[test]
fn the_scaled_object_uses_only_keda_documented_fields_and_the_jobs_queues() {
    let objects = objects();
    let problems = keda::problems(&objects);
    assert!(problems.is_empty(), "{problems:#?}");

    // The HPA behaviour KEDA passes on is a Kubernetes HorizontalPodAutoscaler's: checked by
    // Kubernetes' own schema.
    let so = object(&objects, "ScaledObject", "provisioner-worker");
    let hpa = json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-provisioner-worker"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "provisioner-worker"},
            "minReplicas": so["spec"]["minReplicaCount"],
            "maxReplicas": so["spec"]["maxReplicaCount"],
            "behavior": so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        }
    });
    let path = std::env::temp_dir().join(format!("hpa-{}.json", std::process::id()));
    std::fs::write(&path, hpa.to_string()).unwrap();
    let (ok, out) = kubernetes_validate("1.30", std::slice::from_ref(&path));
    std::fs::remove_file(&path).unwrap();
    assert!(ok && out.contains("passed"), "{out}");

    // The check does see a misspelt field, an AMQP trigger and a missing queue.
    let mut broken = objects.clone();
    let so = broken
        .iter_mut()
        .find(|o| o["kind"] == "ScaledObject")
        .unwrap();
    so["spec"]["pollingIntervall"] = json!(15);
    so["spec"]["triggers"][0]["metadata"]["protocol"] = json!("amqp");
    // Without `useRegex` the pattern names no queue.
    so["spec"]["triggers"][0]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("useRegex");
    let problems = keda::problems(&broken);
    for needle in [
        "spec.pollingIntervall",
        "protocol must be http",
        "the jobs queues are",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "{needle} not seen in {problems:#?}"
        );
    }
}

/// A container's variable: its own `env` first, then the ConfigMap it reads.
fn variable(objects: &[Value], deployment: &str, name: &str) -> String {
    let container =
        &object(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"][0];
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].clone())
        .unwrap_or_else(|| object(objects, "ConfigMap", "provisioner-config")["data"][name].clone())
        .as_str()
        .unwrap_or_else(|| panic!("{deployment} has no {name}"))
        .to_owned()
}

fn number(objects: &[Value], deployment: &str, name: &str) -> i64 {
    variable(objects, deployment, name).parse().unwrap()
}

#[test]
fn the_manifests_numbers_agree_with_each_other() {
    let objects = objects();
    let worker = &object(&objects, "Deployment", "provisioner-worker")["spec"];
    let api = &object(&objects, "Deployment", "provisioner-api")["spec"];
    let so = &object(&objects, "ScaledObject", "provisioner-worker")["spec"];

    // A draining worker is never killed before its shutdown timeout; scale-down waits as long.
    let worker_shutdown = number(
        &objects,
        "provisioner-worker",
        "PROVISIONER_SHUTDOWN_TIMEOUT",
    );
    let grace = worker["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap();
    assert!(
        grace > worker_shutdown,
        "worker grace {grace} s <= shutdown {worker_shutdown} s"
    );
    let window = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        ["stabilizationWindowSeconds"]
        .as_i64()
        .unwrap();
    assert!(window >= worker_shutdown, "scale-down window {window} s");
    assert!(
        worker["replicas"].is_null(),
        "KEDA owns the worker replica count"
    );

    // The API: preStop, then its shutdown timeout, within its grace period.
    let api_shutdown = number(&objects, "provisioner-api", "PROVISIONER_SHUTDOWN_TIMEOUT");
    let api_pod = &api["template"]["spec"];
    let pre_stop: i64 = api_pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(api_pod["terminationGracePeriodSeconds"].as_i64().unwrap() > pre_stop + api_shutdown);

    // The largest pool finds batch work for every slot.
    let max = so["maxReplicaCount"].as_i64().unwrap();
    let concurrency = number(
        &objects,
        "provisioner-worker",
        "PROVISIONER_WORKER_CONCURRENCY",
    );
    let dispatch = number(
        &objects,
        "provisioner-worker",
        "PROVISIONER_DISPATCH_WINDOW",
    );
    assert!(
        dispatch >= 2 * max * concurrency,
        "window {dispatch} for {max} x {concurrency}"
    );

    // Probes: the worker's health listener is the port its probes ask; readiness is /readyz.
    let listen = variable(
        &objects,
        "provisioner-worker",
        "PROVISIONER_WORKER_HEALTH_LISTEN",
    );
    for (spec, port_name) in [(worker, "health"), (api, "http")] {
        let container = &spec["template"]["spec"]["containers"][0];
        let port = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == port_name)
            .unwrap()["containerPort"]
            .as_i64()
            .unwrap();
        if port_name == "health" {
            assert!(listen.ends_with(&format!(":{port}")), "{listen} vs {port}");
        } else {
            assert!(
                variable(&objects, "provisioner-api", "PROVISIONER_LISTEN")
                    .ends_with(&format!(":{port}"))
            );
        }
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], port_name);
        // Selectors select the pods.
        let labels = &spec["template"]["metadata"]["labels"];
        for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&labels[k], v);
        }
    }
    for pdb in objects
        .iter()
        .filter(|o| o["kind"] == "PodDisruptionBudget")
    {
        let target = &object(
            &objects,
            "Deployment",
            pdb["metadata"]["name"].as_str().unwrap(),
        )["spec"];
        assert_eq!(pdb["spec"]["selector"], target["selector"]);
    }
    let service = &object(&objects, "Service", "provisioner-api")["spec"];
    assert_eq!(service["selector"], api["selector"]["matchLabels"]);

    // What only KEDA reads reaches no pod.
    for spec in [worker, api] {
        for source in spec["template"]["spec"]["containers"][0]["envFrom"]
            .as_array()
            .unwrap()
        {
            if let Some(name) = source["secretRef"]["name"].as_str() {
                let secret = object(&objects, "Secret", name);
                assert!(
                    secret["stringData"]["RABBITMQ_MANAGEMENT_URL"].is_null(),
                    "the pods read KEDA's credentials from {name}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_autoscaler_query_counts_the_batch_items_held_back() {
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let count = || async { app.count(figures::HELD_ITEMS_QUERY).await };
    assert_eq!(count().await, 0);
    let r = batches::post(
        &app,
        &app.http,
        "application/x-ndjson",
        batches::ndjson(&batches::items(3, &url)),
    )
    .await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        count().await,
        3,
        "no worker: the dispatcher released nothing"
    );
    app.stop().await;
}

#[test]
fn promtool_accepts_the_alerting_rules_and_their_unit_tests_pass() {
    let promtool = tool("promtool");
    let rule_files: Vec<PathBuf> = std::fs::read_dir(root("deploy/prometheus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    assert!(!rule_files.is_empty());
    for file in &rule_files {
        let (ok, out) = run(&promtool, &["check", "rules", file.to_str().unwrap()], None);
        assert!(ok, "{out}");
    }
    let (ok, out) = run(
        &promtool,
        &["test", "rules", "alerts_test.yml"],
        Some(&root("deploy/prometheus/tests")),
    );
    assert!(ok && out.contains("SUCCESS"), "{out}");

    // promtool does refuse a rule with broken PromQL.
    let broken = std::env::temp_dir().join(format!("rules-{}.yml", std::process::id()));
    std::fs::write(
        &broken,
        "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: max(provisioner_outbox_lag_seconds > \n",
    )
    .unwrap();
    let (ok, out) = run(
        &promtool,
        &["check", "rules", broken.to_str().unwrap()],
        None,
    );
    std::fs::remove_file(&broken).unwrap();
    assert!(!ok, "{out}");
}

/// The `provisioner_*` names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("provisioner_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every PromQL expression of the dashboard, with its panel's title.
fn dashboard_expressions(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"].as_array().into_iter().flatten().map(|t| {
                (
                    p["title"].as_str().unwrap().to_owned(),
                    t["expr"].as_str().unwrap().to_owned(),
                )
            })
        })
        .collect()
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_read_only_figures_that_metrics_serves() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root("deploy/grafana/provisioner.json")).unwrap(),
    )
    .unwrap();
    let expressions = dashboard_expressions(&dashboard);
    assert!(expressions.len() >= 15);
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "panel ids are unique"
        );
        let grid = &panel["gridPos"];
        assert!(grid["x"].as_i64().unwrap() + grid["w"].as_i64().unwrap() <= 24);
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            assert!(!panel["targets"].as_array().unwrap().is_empty());
        }
    }
    assert_eq!(dashboard["templating"]["list"][0]["type"], "datasource");

    // Every expression is PromQL that promtool parses (as recording rules).
    let rules: String = expressions
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            format!(
                "      - record: dashboard:expr_{i}\n        expr: {}\n",
                serde_json::to_string(expr).unwrap()
            )
        })
        .collect();
    let file = std::env::temp_dir().join(format!("dashboard-{}.yml", std::process::id()));
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    let (ok, out) = run(
        &tool("promtool"),
        &["check", "rules", file.to_str().unwrap()],
        None,
    );
    std::fs::remove_file(&file).unwrap();
    assert!(ok, "{out}");

    // Every figure they read is on a live /metrics page (after a request and a long-poll).
    let app = TestApp::without_workers().await;
    let url = app.serve_sample_template("t").await;
    let id = app
        .submit(&fixtures::tenant_url(), &fixtures::create_body(&url))
        .await;
    let (status, _) = app
        .get_json(&format!("/configapi/v2/jobs/{id}?wait=1&status=queued"))
        .await;
    assert_eq!(status, 200);
    let text = app.metrics_text().await;
    // The page passes promtool's lint: every family has its help, and its type fits its samples.
    let mut lint = provisioner_tests::process::tool(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let linted = lint.wait_with_output().unwrap();
    assert!(
        linted.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
    let served: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let alerts = yaml_documents(&root("deploy/prometheus/alerts.yml"));
    let alert_expressions = alerts[0]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
            )
        });
    for (what, expr) in expressions.into_iter().chain(alert_expressions) {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{what}: {expr}");
        for name in names {
            assert!(
                served.contains(&name),
                "{what} reads {name}, which /metrics does not serve"
            );
        }
    }
    app.stop().await;
}
