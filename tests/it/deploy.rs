//! Static checks of the deployment files, since no Docker engine runs here:
//! `docker-compose.yml` has every service, port and mounted file it needs and
//! its paysync configuration is valid; Prometheus scrapes what paysync serves;
//! the dashboard and the alert rules only use metrics paysync exports.
//! (`promtool check rules` and `promtool test rules` run in `.ci/run`.)

use std::collections::BTreeSet;
use std::path::Path;

use paysync::config::Settings;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load_yaml(relative: &str) -> Yaml {
    let text = std::fs::read_to_string(root().join(relative)).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

fn compose() -> Yaml {
    load_yaml("docker-compose.yml")
}

fn strings(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_has_every_service_with_its_ports() {
    let compose = compose();
    let services = compose["services"].as_hash().unwrap();
    let names: BTreeSet<&str> = services.keys().filter_map(Yaml::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "kafka",
            "kafka-init",
            "emulator",
            "paysync",
            "prometheus",
            "grafana"
        ])
    );
    for (service, port) in [
        ("kafka", "9092:9092"),
        ("emulator", "8080:8080"),
        ("paysync", "9464:9464"),
        ("prometheus", "9090:9090"),
        ("grafana", "3000:3000"),
    ] {
        assert!(
            strings(&compose["services"][service]["ports"]).contains(&port.to_owned()),
            "{service} publishes {port}"
        );
    }
    for service in ["emulator", "paysync"] {
        assert_eq!(
            compose["services"][service]["build"].as_str(),
            Some("."),
            "{service} is built from the Dockerfile"
        );
    }
    assert!(root().join("Dockerfile").is_file());
}

#[test]
fn every_mounted_file_exists() {
    let compose = compose();
    let mut mounts = 0;
    for (name, service) in compose["services"].as_hash().unwrap() {
        for volume in strings(&service["volumes"]) {
            let source = volume.split(':').next().unwrap();
            assert!(
                source.starts_with("./"),
                "{name:?}: {volume} is not a repository path"
            );
            assert!(
                root().join(source).exists(),
                "{name:?} mounts {source}, which does not exist"
            );
            mounts += 1;
        }
    }
    assert!(mounts >= 5);
}

#[test]
fn the_compose_configuration_of_paysync_is_valid_and_points_at_the_other_services() {
    let compose = compose();
    let paysync = &compose["services"]["paysync"];
    let command = strings(&paysync["command"]);
    assert_eq!(command[..2], ["run".to_owned(), "--config".to_owned()]);
    let mounted = strings(&paysync["volumes"])
        .into_iter()
        .find(|v| v.contains(&command[2]))
        .expect("the config file is mounted");
    let source = mounted.split(':').next().unwrap();
    let secret = paysync["environment"]["PAYSYNC_TOP__APP_SECRET"]
        .as_str()
        .unwrap()
        .to_owned();
    let settings = Settings::load_from(
        Some(&root().join(source)),
        [("PAYSYNC_TOP__APP_SECRET".to_owned(), secret.clone())],
    )
    .unwrap_or_else(|error| panic!("{source}: {error}"));
    assert!(settings.admin.listen.ends_with(":9464"));
    assert_eq!(settings.kafka.bootstrap_servers, "kafka:9092");
    assert!(
        settings
            .top
            .gateway_url
            .starts_with("http://emulator:8080/")
    );
    // The emulator knows the same app key and secret.
    let emulator = &compose["services"]["emulator"];
    let emulator_command = strings(&emulator["command"]);
    let app_key = emulator_command
        .iter()
        .skip_while(|a| *a != "--app-key")
        .nth(1)
        .unwrap();
    assert_eq!(app_key, &settings.top.app_key);
    assert_eq!(
        emulator["environment"]["PAYSYNC_EMULATOR_APP_SECRET"].as_str(),
        Some(secret.as_str())
    );
    // The topic creator creates the source and dead-letter topics.
    let init = strings(&compose["services"]["kafka-init"]["command"]).join(" ");
    for topic in settings
        .kafka
        .topics
        .iter()
        .chain([&settings.kafka.dlq_topic])
    {
        assert!(
            init.contains(&format!("--topic {topic} ")),
            "kafka-init creates {topic}"
        );
    }
}

#[test]
fn prometheus_scrapes_paysync_and_loads_the_mounted_rules() {
    let prometheus = load_yaml("deploy/prometheus.yml");
    let targets = strings(&prometheus["scrape_configs"][0]["static_configs"][0]["targets"]);
    assert_eq!(targets, ["paysync:9464"]);
    let rules = strings(&prometheus["rule_files"]);
    let mounts = strings(&compose()["services"]["prometheus"]["volumes"]);
    for rule in rules {
        assert!(
            mounts.iter().any(|m| m.ends_with(&format!(":{rule}:ro"))),
            "{rule} is mounted"
        );
    }
}

#[path = "../shared/metrics_used.rs"]
mod metrics_used;
use metrics_used::metric_names;

fn exported() -> BTreeSet<String> {
    metrics_used::exported(root())
}

#[test]
fn the_dashboard_only_uses_exported_metrics_and_covers_the_essentials() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dashboards/paysync.json")).unwrap(),
    )
    .unwrap();
    let exported = exported();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            for name in metric_names(target["expr"].as_str().unwrap()) {
                assert!(
                    exported.contains(&name),
                    "panel {} uses unknown metric {name}",
                    panel["title"]
                );
                used.insert(name);
            }
        }
    }
    for essential in [
        "paysync_events_delivered_total",
        "paysync_events_dead_lettered_total",
        "paysync_call_duration_seconds",
        "paysync_partition_lag_messages",
        "paysync_rate_limiter_wait_seconds",
        "paysync_breaker_state",
        "paysync_halted",
        "paysync_ban_remaining_seconds",
        "paysync_rebalances_total",
    ] {
        assert!(used.contains(essential), "the dashboard shows {essential}");
    }
}

#[test]
fn the_alert_rules_only_use_exported_metrics() {
    let rules = load_yaml("dashboards/alerts.yml");
    let exported = exported();
    let mut alerts = BTreeSet::new();
    for rule in rules["groups"][0]["rules"].as_vec().unwrap() {
        alerts.insert(rule["alert"].as_str().unwrap().to_owned());
        for name in metric_names(rule["expr"].as_str().unwrap()) {
            assert!(
                exported.contains(&name),
                "{} uses unknown metric {name}",
                rule["alert"].as_str().unwrap()
            );
        }
    }
    for alert in [
        "PaysyncLagGrowing",
        "PaysyncHalted",
        "PaysyncDeadLetters",
        "PaysyncBanActive",
        "PaysyncNoCommit",
    ] {
        assert!(alerts.contains(alert), "{alert} is defined");
    }
}
