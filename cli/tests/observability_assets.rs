//! berth's observability assets agree with the metrics the code exposes.
//!
//! The exposed names come from the real registries (`berth_telemetry`'s
//! `Component::Control` and `Component::Agent`, rendered as Prometheus
//! scrapes them), never from a list kept here:
//!
//! - `deploy/grafana/berth.json` is a dashboard with a Prometheus
//!   datasource variable whose panels all query that datasource; every
//!   metric an expression names exists (counters and histogram series
//!   under `rate`/`increase`, gauges not), every family is on it, and
//!   every expression parses (`promtool check rules`);
//! - `deploy/prometheus/prometheus.yml` passes `promtool check config`
//!   (Debian's prometheus package, installed by scripts/setup.sh; a
//!   missing promtool fails the test, it does not skip it), and so does
//!   its commented Kubernetes-discovery job once uncommented (up to
//!   Debian's build lacking that discovery: then with it swapped for a
//!   static target);
//! - `docs/observability.md` names every family by its scraped name, its
//!   metric table gives each the type, labels and component the code
//!   gives it, and it names no metric that does not exist.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_telemetry::metrics::{
    self, Call, Component, KindOutcome, KindResult, Method, MethodCode, PhaseLabel,
};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family as exposed.
#[derive(Debug, Clone)]
struct Family {
    kind: Kind,
    /// The components ("berthd", "berth-agent") that expose it.
    components: BTreeSet<&'static str>,
    /// Label names of its samples (without a histogram's `le`).
    labels: BTreeSet<String>,
}

impl Family {
    /// The name a reader looks for: counters with `_total`, the others
    /// as declared (histograms with their unit).
    fn primary(name: &str, kind: Kind) -> String {
        match kind {
            Kind::Counter => format!("{name}_total"),
            Kind::Gauge | Kind::Histogram => name.to_string(),
        }
    }

    /// The series names Prometheus stores for it.
    fn series(name: &str, kind: Kind) -> Vec<String> {
        match kind {
            Kind::Counter => vec![format!("{name}_total")],
            Kind::Gauge => vec![name.to_string()],
            Kind::Histogram => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect(),
        }
    }
}

/// Give every labelled family one sample, so that its series (and label
/// names) show in a render. Values do not matter here.
fn populate() {
    let m = metrics::get();
    m.grpc("/x.Test/Call", "Ok", Duration::ZERO);
    // `grpc` fills both gRPC families; name their label types here too,
    // so a change of labels shows in this test.
    m.grpc_requests
        .get_or_create(&MethodCode {
            method: "/x.Test/Call".into(),
            code: "Ok".into(),
        })
        .inc_by(0);
    m.grpc_duration
        .get_or_create(&Method {
            method: "/x.Test/Call".into(),
        })
        .observe(0.0);
    m.sandboxes
        .get_or_create(&PhaseLabel {
            phase: "Running".into(),
        })
        .set(0);
    m.operations
        .get_or_create(&KindOutcome {
            kind: "update".into(),
            outcome: "Succeeded".into(),
        })
        .inc_by(0);
    m.phase_duration
        .get_or_create(&PhaseLabel {
            phase: "Pulling".into(),
        })
        .observe(0.0);
    m.agent_commands
        .get_or_create(&KindResult {
            kind: "ensure".into(),
            result: "ok".into(),
        })
        .inc_by(0);
    m.agent_engine_duration
        .get_or_create(&Call {
            call: "ensure".into(),
        })
        .observe(0.0);
}

/// The label names of one sample line.
fn label_names(sample: &str) -> BTreeSet<String> {
    let Some((_, rest)) = sample.split_once('{') else {
        return BTreeSet::new();
    };
    let inside = rest.split_once('}').map_or(rest, |(l, _)| l);
    inside
        .split(',')
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.trim().to_string()))
        .filter(|k| !k.is_empty() && k != "le")
        .collect()
}

/// Every family the code exposes, by declared name (as in `# TYPE`).
fn exposed() -> BTreeMap<String, Family> {
    populate();
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (component, label) in [
        (Component::Control, "berthd"),
        (Component::Agent, "berth-agent"),
    ] {
        let text = metrics::render(&metrics::get().registry(component));
        let mut declared = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("# TYPE ") else {
                continue;
            };
            let (name, kind) = rest.split_once(' ').unwrap();
            let kind = match kind {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                other => panic!("unexpected metric type {other} of {name}"),
            };
            assert!(name.starts_with("berth_"), "{name} lacks the prefix");
            declared.push(name.to_string());
            let family = families.entry(name.to_string()).or_insert(Family {
                kind,
                components: BTreeSet::new(),
                labels: BTreeSet::new(),
            });
            assert_eq!(family.kind, kind, "{name} has one type everywhere");
            family.components.insert(label);
        }
        // Every sample belongs to a declared family under a series name
        // derived as above, and every derived series has a sample.
        let mut seen = BTreeSet::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let owner = declared
                .iter()
                .find(|f| {
                    Family::series(f, families[*f].kind)
                        .iter()
                        .any(|s| s == name)
                })
                .unwrap_or_else(|| panic!("sample {name} of no declared family in\n{text}"));
            families
                .get_mut(owner)
                .unwrap()
                .labels
                .extend(label_names(line));
            seen.insert(name.to_string());
        }
        for f in &declared {
            for s in Family::series(f, families[f].kind) {
                assert!(seen.contains(&s), "{s} has no sample in\n{text}");
            }
        }
    }
    assert!(families.len() >= 20, "{families:?}");
    families
}

/// Names PromQL can query.
fn series_names(families: &BTreeMap<String, Family>) -> BTreeMap<String, Kind> {
    families
        .iter()
        .flat_map(|(name, f)| {
            Family::series(name, f.kind)
                .into_iter()
                .map(move |s| (s, f.kind))
        })
        .collect()
}

/// Every `berth_…` identifier in `text`, with the text before it.
fn metric_refs(text: &str) -> Vec<(String, &str)> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("berth_") {
        let start = from + i;
        let end = text[start..]
            .find(|c: char| !ident(c))
            .map_or(text.len(), |e| start + e);
        let boundary = !text[..start].chars().next_back().is_some_and(ident);
        if boundary {
            out.push((text[start..end].to_string(), &text[..start]));
        }
        from = end;
    }
    out
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(inner) = p.get("panels") {
                walk(inner, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn promtool(args: &[&str]) -> std::process::Output {
    Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool is installed (scripts/setup.sh installs Debian's prometheus)")
}

#[test]
fn the_grafana_dashboard_queries_only_exposed_metrics() {
    let families = exposed();
    let series = series_names(&families);
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/berth.json")).unwrap();
    assert!(
        dashboard["schemaVersion"].as_u64().unwrap() >= 36,
        "a current schema"
    );
    assert!(!dashboard["uid"].as_str().unwrap().is_empty());
    assert!(!dashboard["title"].as_str().unwrap().is_empty());

    // A Prometheus datasource variable, which every query uses.
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let ds = variables
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a Prometheus datasource variable");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());
    let uses_ds = |v: &Value| v["type"] == "prometheus" && v["uid"] == ds_ref.as_str();

    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        let id = panel["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} ({title}) is unique");
        assert!(panel["gridPos"].is_object(), "{title} has a place");
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            uses_ds(&panel["datasource"]),
            "{title}: {}",
            panel["datasource"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has targets");
        for t in targets {
            assert!(uses_ds(&t["datasource"]), "{title}: {}", t["datasource"]);
            let expr = t["expr"].as_str().unwrap();
            assert!(!expr.trim().is_empty(), "{title}: empty expression");
            exprs.push((title.to_string(), expr.to_string()));
        }
    }
    assert!(exprs.len() >= 15, "{} expressions", exprs.len());
    for v in variables.iter().filter(|v| v["type"] == "query") {
        let query = v["query"].as_str().unwrap_or_default();
        for (name, _) in metric_refs(query) {
            assert!(series.contains_key(&name), "variable {v}: {name}");
        }
    }

    let mut used = BTreeSet::new();
    for (title, expr) in &exprs {
        let refs = metric_refs(expr);
        assert!(!refs.is_empty(), "{title}: {expr} queries no berth metric");
        for (name, before) in refs {
            let kind = series
                .get(&name)
                .unwrap_or_else(|| panic!("{title}: {name} is not exposed (in {expr})"));
            let under_rate = before.ends_with("rate(") || before.ends_with("increase(");
            match kind {
                Kind::Counter | Kind::Histogram => assert!(
                    under_rate,
                    "{title}: {name} is cumulative; rate() or increase() it: {expr}"
                ),
                Kind::Gauge => assert!(!under_rate, "{title}: {name} is a gauge: {expr}"),
            }
            if name.ends_with("_bucket") {
                assert!(
                    expr.contains("histogram_quantile(") && expr.contains("le"),
                    "{title}: buckets only into histogram_quantile by le: {expr}"
                );
            }
            used.insert(name);
        }
    }
    for (name, f) in &families {
        assert!(
            Family::series(name, f.kind)
                .iter()
                .any(|s| used.contains(s)),
            "{name} is on no panel"
        );
    }

    // Every expression parses: as recording rules, with Grafana's
    // variables replaced by what they stand for.
    let dir = tempfile::tempdir().unwrap();
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, expr))| {
            let mut e = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "30s")
                .replace("$__range", "1h");
            // Other variables only stand inside label matchers.
            for v in variables.iter().filter_map(|v| v["name"].as_str()) {
                e = e
                    .replace(&format!("${{{v}}}"), ".*")
                    .replace(&format!("${v}"), ".*");
            }
            assert!(!e.contains('$'), "unknown variable in {expr}");
            serde_json::json!({ "record": format!("berth:dashboard:{i}"), "expr": e })
        })
        .collect();
    let file = dir.path().join("rules.yml");
    std::fs::write(
        &file,
        serde_json::to_string_pretty(
            &serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] }),
        )
        .unwrap(),
    )
    .unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dashboard expressions do not parse: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `prometheus.yml` with its commented Kubernetes-discovery block
/// (between `# BEGIN kubernetes_sd_configs` and `# END …`) uncommented.
fn uncommented(config: &str) -> String {
    let mut inside = false;
    let mut blocks = 0;
    let mut out = String::new();
    for line in config.lines() {
        if line.trim() == "# END kubernetes_sd_configs" {
            inside = false;
        }
        match line.strip_prefix("  # ").filter(|_| inside) {
            Some(rest) => out.push_str(&format!("  {rest}")),
            None => out.push_str(line),
        }
        out.push('\n');
        if line.trim() == "# BEGIN kubernetes_sd_configs" {
            inside = true;
            blocks += 1;
        }
    }
    assert_eq!(blocks, 1, "one commented kubernetes_sd_configs block");
    out
}

fn check_config(path: &Path) -> (bool, String) {
    let out = promtool(&["check", "config", path.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_prometheus_config_passes_promtool() {
    let path = repo().join("deploy/prometheus/prometheus.yml");
    let (ok, out) = check_config(&path);
    assert!(ok, "promtool check config: {out}");
    let text = read("deploy/prometheus/prometheus.yml");
    for port in ["9464", "9465"] {
        assert!(text.contains(port), "the config scrapes port {port}");
    }
    let config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let jobs = config["scrape_configs"].as_sequence().unwrap();
    let statics = jobs
        .iter()
        .filter(|j| j.get("static_configs").is_some())
        .count();
    assert!(statics >= 2, "static jobs for berthd and the agents");
    assert!(
        jobs.iter().any(|j| j.get("dns_sd_configs").is_some()),
        "berthd found through its headless Service"
    );

    // The commented Kubernetes job for the agents: a pod-role discovery
    // in berth-system. Debian's promtool has no Kubernetes discovery, so
    // the file with it uncommented may fail on exactly that; the rest of
    // the job (its relabelling) must pass with the discovery swapped for
    // a static target.
    let full = uncommented(&text);
    let dir = tempfile::tempdir().unwrap();
    let full_path = dir.path().join("full.yml");
    std::fs::write(&full_path, &full).unwrap();
    let (ok, out) = check_config(&full_path);
    let only_no_kube = out
        .lines()
        .filter(|l| l.trim_start().starts_with("line "))
        .all(|l| l.contains("field kubernetes_sd_configs not found"));
    assert!(
        ok || (out.contains("kubernetes_sd_configs") && only_no_kube),
        "promtool check config (Kubernetes job uncommented): {out}"
    );
    let mut config: serde_yaml::Value = serde_yaml::from_str(&full).unwrap();
    let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
    let mut kube = 0;
    for job in jobs.iter_mut() {
        let map = job.as_mapping_mut().unwrap();
        let Some(sd) = map.remove("kubernetes_sd_configs") else {
            continue;
        };
        kube += 1;
        assert_eq!(sd[0]["role"].as_str(), Some("pod"), "{sd:?}");
        assert_eq!(
            sd[0]["namespaces"]["names"][0].as_str(),
            Some("berth-system"),
            "{sd:?}"
        );
        map.insert(
            "static_configs".into(),
            serde_yaml::from_str("[{targets: ['placeholder:9465']}]").unwrap(),
        );
    }
    assert!(kube >= 1, "a kubernetes_sd_configs job for the agents");
    let swapped = dir.path().join("swapped.yml");
    std::fs::write(&swapped, serde_yaml::to_string(&config).unwrap()).unwrap();
    let (ok, out) = check_config(&swapped);
    assert!(ok, "promtool check config (Kubernetes job, static): {out}");
}

#[test]
fn the_doc_names_every_metric_as_exposed() {
    let families = exposed();
    let series = series_names(&families);
    let doc = read("docs/observability.md");

    // Nothing named that does not exist (the bare prefix aside).
    let named: BTreeSet<String> = metric_refs(&doc)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != "berth_")
        .collect();
    for n in &named {
        assert!(
            series.contains_key(n) || families.contains_key(n),
            "docs/observability.md names {n}, which is not exposed"
        );
    }

    // A table row per family: | `name` | type | labels | component | meaning |
    let mut rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in doc.lines().filter(|l| l.trim_start().starts_with('|')) {
        let cells: Vec<String> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        if let Some(name) = cells
            .first()
            .and_then(|c| c.strip_prefix("`berth_"))
            .and_then(|c| c.strip_suffix('`'))
        {
            rows.insert(format!("berth_{name}"), cells);
        }
    }
    for (name, f) in &families {
        let primary = Family::primary(name, f.kind);
        assert!(
            named.contains(&primary),
            "docs/observability.md does not name {primary}"
        );
        let row = rows
            .get(&primary)
            .unwrap_or_else(|| panic!("no table row for {primary}"));
        assert!(row.len() >= 5, "{primary}: {row:?}");
        assert_eq!(row[1], f.kind.name(), "{primary}: type");
        let labels: BTreeSet<String> = row[2]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty() && l != "—" && l != "-")
            .collect();
        assert_eq!(labels, f.labels, "{primary}: labels");
        let components: BTreeSet<&str> = ["berthd", "berth-agent"]
            .into_iter()
            .filter(|c| row[3].split([',', ' ']).any(|w| w.trim() == *c))
            .collect();
        assert_eq!(components, f.components, "{primary}: exposed by");
        assert!(!row[4].is_empty(), "{primary}: meaning");
    }
    assert_eq!(
        rows.len(),
        families.len(),
        "one row per family: {:?}",
        rows.keys()
    );

    for must in [
        "--metrics-listen",
        "--otlp-endpoint",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_SAMPLER",
        "OTEL_BSP_SCHEDULE_DELAY",
        "application/openmetrics-text",
        "9464",
        "9465",
        "4317",
    ] {
        assert!(doc.contains(must), "docs/observability.md mentions {must}");
    }
}
