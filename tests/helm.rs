//! The Helm chart (`deploy/helm/paysync`) checked against paysync itself, for
//! the default values and every set in `deploy/helm/ci/`: the probes hit the
//! admin server's routes on its port, the ConfigMap is a configuration
//! `paysync check-config` accepts and holds no secret, the grace period
//! outlasts the drains, the PrometheusRule is `dashboards/alerts.yml` and the
//! dashboard is `dashboards/paysync.json` with only exported metrics, and the
//! egress proxy and CA bundle are mounted where the configuration names them.
//!
//! Needs `helm`: `scripts/helm-check` builds a pinned one and runs this with
//! `PAYSYNC_HELM` set (`cargo test --features helm --test helm`).

use std::path::{Path, PathBuf};
use std::process::Command;

use paysync::config::Settings;
use yaml_rust2::{Yaml, YamlLoader};

#[path = "shared/metrics_used.rs"]
mod metrics_used;

const CHART: &str = "deploy/helm/paysync";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn helm() -> PathBuf {
    std::env::var_os("PAYSYNC_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("helm"))
}

/// The value sets CI renders: the defaults, then each file of deploy/helm/ci.
fn value_sets() -> Vec<Option<PathBuf>> {
    let mut sets = vec![None];
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/helm/ci"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "at least two non-default value sets");
    sets.extend(files.into_iter().map(Some));
    sets
}

/// `helm template` with a value set and extra arguments: the objects, or helm's error.
fn try_render(set: &Option<PathBuf>, extra: &[&str]) -> Result<Vec<Yaml>, String> {
    let mut command = Command::new(helm());
    command
        .current_dir(root())
        .args(["template", "paysync", CHART]);
    if let Some(file) = set {
        command.arg("--values").arg(file);
    }
    command.args(extra);
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (set PAYSYNC_HELM): {e}", helm().display()));
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8(output.stdout).unwrap();
    Ok(YamlLoader::load_from_str(&text)
        .unwrap()
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect())
}

fn render(set: &Option<PathBuf>) -> Vec<Yaml> {
    try_render(set, &[]).unwrap_or_else(|error| panic!("helm template {set:?}: {error}"))
}

fn of_kind<'a>(objects: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some(kind))
        .collect()
}

fn one<'a>(objects: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found = of_kind(objects, kind);
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn container(objects: &[Yaml]) -> &Yaml {
    &one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
}

/// The paysync configuration ConfigMap's TOML (the one holding paysync.toml).
fn config_toml(objects: &[Yaml]) -> String {
    of_kind(objects, "ConfigMap")
        .into_iter()
        .find_map(|c| c["data"]["paysync.toml"].as_str())
        .expect("a ConfigMap with paysync.toml")
        .to_owned()
}

/// Loads the rendered TOML as paysync would, with the app secret file (a
/// Secret mount in the cluster) pointed at a local file.
fn load_settings(toml: &str) -> Settings {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("paysync.toml");
    std::fs::write(&config, toml).unwrap();
    let secret = dir.path().join("app-secret");
    std::fs::write(&secret, "not-a-real-secret\n").unwrap();
    let mut env = vec![(
        "PAYSYNC_TOP__APP_SECRET_FILE".to_owned(),
        secret.display().to_string(),
    )];
    if let Some(bundle) = local_ca_bundle(dir.path(), toml) {
        env.push((
            "PAYSYNC_TOP__CA_FILE".to_owned(),
            bundle.display().to_string(),
        ));
    }
    Settings::load_from(Some(&config), env).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

/// A CA bundle written into `dir` when the configuration names one (a
/// mounted ConfigMap or Secret in the cluster), to be passed as
/// `PAYSYNC_TOP__CA_FILE`.
fn local_ca_bundle(dir: &Path, toml: &str) -> Option<PathBuf> {
    let parsed: toml::Table = toml.parse().unwrap();
    parsed["top"].get("ca_file")?;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let bundle = dir.join("ca.pem");
    std::fs::write(&bundle, params.self_signed(&key).unwrap().pem()).unwrap();
    Some(bundle)
}

/// The element of a list of objects with this `name` (ports, mounts, volumes).
fn named<'a>(list: &'a Yaml, name: &str) -> &'a Yaml {
    list.as_vec()
        .unwrap_or_else(|| panic!("a list: {list:?}"))
        .iter()
        .find(|item| item["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("one named {name}"))
}

fn int(yaml: &Yaml) -> i64 {
    yaml.as_i64()
        .unwrap_or_else(|| panic!("an integer: {yaml:?}"))
}

#[test]
fn the_probes_hit_the_admin_servers_routes_on_its_port() {
    for set in value_sets() {
        let objects = render(&set);
        let container = container(&objects);
        let port = named(&container["ports"], "admin");
        let settings = load_settings(&config_toml(&objects));
        let listen: std::net::SocketAddr = settings.admin.listen.parse().unwrap();
        assert_eq!(
            int(&port["containerPort"]),
            i64::from(listen.port()),
            "{set:?}"
        );
        assert!(
            listen.ip().is_unspecified(),
            "the kubelet reaches the pod's address: {listen}"
        );
        for (probe, path) in [
            ("livenessProbe", paysync::admin::LIVE_PATH),
            ("readinessProbe", paysync::admin::READY_PATH),
        ] {
            assert_eq!(container[probe]["httpGet"]["path"].as_str(), Some(path));
            assert_eq!(container[probe]["httpGet"]["port"].as_str(), Some("admin"));
        }
        let service = of_kind(&objects, "Service")
            .into_iter()
            .find(|s| {
                s["spec"]["clusterIP"].as_str() != Some("None")
                    && s["spec"]["ports"][0]["name"].as_str() == Some("admin")
            })
            .expect("the metrics Service");
        assert_eq!(
            service["spec"]["ports"][0]["targetPort"].as_str(),
            Some("admin")
        );
        assert_eq!(
            service["spec"]["publishNotReadyAddresses"].as_bool(),
            Some(true),
            "a halted replica is not ready, and its metrics carry the alert"
        );
        for monitor in of_kind(&objects, "ServiceMonitor") {
            let endpoint = &monitor["spec"]["endpoints"][0];
            assert_eq!(endpoint["port"].as_str(), Some("admin"));
            assert_eq!(
                endpoint["path"].as_str(),
                Some(paysync::admin::METRICS_PATH)
            );
        }
    }
}

#[test]
fn the_configmap_passes_check_config_and_the_secret_comes_from_the_secret() {
    for set in value_sets() {
        let objects = render(&set);
        let toml = config_toml(&objects);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("paysync.toml");
        std::fs::write(&config, &toml).unwrap();
        let secret = dir.path().join("app-secret");
        std::fs::write(&secret, "not-a-real-secret\n").unwrap();
        let mut check = Command::new(env!("CARGO_BIN_EXE_paysync"));
        check
            .args(["check-config", "--config"])
            .arg(&config)
            .env("PAYSYNC_TOP__APP_SECRET_FILE", &secret);
        // Files the cluster mounts, here written locally under the same roles.
        let parsed: toml::Table = toml.parse().unwrap();
        if let Some(bundle) = local_ca_bundle(dir.path(), &toml) {
            check.env("PAYSYNC_TOP__CA_FILE", &bundle);
        }
        if env_value(container(&objects), "PAYSYNC_TOP__PROXY_PASSWORD_FILE").is_some() {
            let password = dir.path().join("proxy-password");
            std::fs::write(&password, "not-a-real-password\n").unwrap();
            check.env("PAYSYNC_TOP__PROXY_PASSWORD_FILE", &password);
        }
        let output = check.output().unwrap();
        assert!(
            output.status.success(),
            "{set:?}: {}\n{}\n{toml}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        // The app secret file is where the Secret is mounted, under its key.
        let secret_file = parsed["top"]["app_secret_file"].as_str().unwrap();
        let container = container(&objects);
        let mount = named(&container["volumeMounts"], "top-secret");
        let volume = named(
            &one(&objects, "StatefulSet")["spec"]["template"]["spec"]["volumes"],
            "top-secret",
        );
        let key = volume["secret"]["items"][0]["path"].as_str().unwrap();
        assert_eq!(
            secret_file,
            format!("{}/{key}", mount["mountPath"].as_str().unwrap())
        );

        // The configuration has no key that holds a secret...
        for key in ["app_secret", "session"] {
            assert!(
                !parsed["top"].as_table().unwrap().contains_key(key),
                "{set:?}: top.{key}"
            );
        }
        for table in ["librdkafka", "consumer", "producer"] {
            if let Some(table) = parsed["kafka"].get(table).and_then(toml::Value::as_table) {
                assert!(
                    table.keys().all(|k| !k.contains("password")),
                    "{set:?}: a password in kafka.{table:?}"
                );
            }
        }
        // ...and no ConfigMap mentions one.
        for map in of_kind(&objects, "ConfigMap") {
            let text = format!("{:?}", map["data"]).to_lowercase();
            assert!(
                !text.contains("password"),
                "{set:?}: a ConfigMap mentions a password"
            );
        }
        // librdkafka secrets come from Secret keys, as environment variables.
        for variable in container["env"].as_vec().into_iter().flatten() {
            let name = variable["name"].as_str().unwrap();
            if name.starts_with("PAYSYNC_KAFKA__LIBRDKAFKA__") || name == "PAYSYNC_TOP__SESSION" {
                assert!(
                    !variable["valueFrom"]["secretKeyRef"]["name"].is_badvalue(),
                    "{name} comes from a Secret"
                );
                assert!(
                    variable["value"].is_badvalue(),
                    "{name} has no literal value"
                );
            }
        }
    }
}

#[test]
fn secrets_given_as_values_are_refused() {
    for (extra, names) in [
        (
            ["--set", "config.top.app_secret=s3cret"],
            "config.top.app_secret",
        ),
        (["--set", "config.top.session=s3cret"], "config.top.session"),
        (
            ["--set", "config.top.proxy_password=s3cret"],
            "config.top.proxy_password",
        ),
        (
            ["--set", "config.kafka.librdkafka.sasl\\.password=s3cret"],
            "sasl.password",
        ),
    ] {
        let error = try_render(&None, &extra).expect_err("refused");
        assert!(error.contains(names), "{error}");
        assert!(!error.contains("s3cret"), "the refusal repeats no secret");
    }
}

/// The literal value of a container's environment variable, if it has one.
fn env_value<'a>(container: &'a Yaml, name: &str) -> Option<&'a str> {
    container["env"]
        .as_vec()
        .into_iter()
        .flatten()
        .find(|variable| variable["name"].as_str() == Some(name))
        .and_then(|variable| variable["value"].as_str())
}

/// The path a volume's single item is mounted at in the container.
fn mounted_item(objects: &[Yaml], volume_name: &str) -> (String, &'static str) {
    let pod = &one(objects, "StatefulSet")["spec"]["template"]["spec"];
    let volume = named(&pod["volumes"], volume_name);
    let (source, kind) = if !volume["secret"].is_badvalue() {
        (&volume["secret"], "Secret")
    } else {
        (&volume["configMap"], "ConfigMap")
    };
    let item = source["items"][0]["path"].as_str().unwrap();
    let mount = named(&container(objects)["volumeMounts"], volume_name);
    (
        format!("{}/{item}", mount["mountPath"].as_str().unwrap()),
        kind,
    )
}

#[test]
fn the_egress_proxy_and_the_ca_bundle_come_from_their_secret_and_configmap() {
    let set = Some(root().join("deploy/helm/ci/egress.yaml"));
    let objects = render(&set);
    let parsed: toml::Table = config_toml(&objects).parse().unwrap();
    let top = parsed["top"].as_table().unwrap();
    assert_eq!(
        top["proxy_url"].as_str(),
        Some("http://egress-proxy.network.svc:3128")
    );
    assert_eq!(top["proxy_username"].as_str(), Some("paysync"));
    assert_eq!(top["no_proxy"].as_str(), Some(".svc,.cluster.local"));
    assert_eq!(top["tls_roots"].as_str(), Some("system"));
    // The bundle is the ConfigMap's key, where it is mounted.
    let (bundle, kind) = mounted_item(&objects, "top-ca");
    assert_eq!(kind, "ConfigMap");
    assert_eq!(top["ca_file"].as_str(), Some(bundle.as_str()));
    assert!(bundle.ends_with("/bundle.pem"), "{bundle}");
    // The password is a Secret's key mounted as a file; the environment
    // holds only its path, and the ConfigMap neither.
    let (password, kind) = mounted_item(&objects, "proxy-secret");
    assert_eq!(kind, "Secret");
    assert_eq!(
        env_value(container(&objects), "PAYSYNC_TOP__PROXY_PASSWORD_FILE"),
        Some(password.as_str())
    );
    assert!(!top.contains_key("proxy_password") && !top.contains_key("proxy_password_file"));
    let settings = load_settings(&config_toml(&objects));
    assert_eq!(
        settings.top.proxy_url.as_deref(),
        Some("http://egress-proxy.network.svc:3128")
    );

    // Nothing of it without the values: the environment decides.
    let defaults = render(&None);
    let parsed: toml::Table = config_toml(&defaults).parse().unwrap();
    for key in ["proxy_url", "ca_file", "tls_roots", "no_proxy"] {
        assert!(
            !parsed["top"].as_table().unwrap().contains_key(key),
            "{key}"
        );
    }
}

#[test]
fn egress_values_that_cannot_work_are_refused() {
    for (extra, says) in [
        (
            vec![
                "--set",
                "topCaBundle.secretName=a",
                "--set",
                "topCaBundle.configMapName=b",
            ],
            "not both",
        ),
        (
            vec!["--set", "topCaBundle.roots=file"],
            "roots = file needs",
        ),
        (
            vec!["--set", "topProxy.passwordSecret.name=egress"],
            "set topProxy.url too",
        ),
    ] {
        let error = try_render(&None, &extra).expect_err("refused");
        assert!(error.contains(says), "{extra:?}: {error}");
    }
}

#[test]
fn sigterm_has_time_for_both_drains() {
    for set in value_sets() {
        let objects = render(&set);
        let settings = load_settings(&config_toml(&objects));
        let grace_ms = 1000
            * int(
                &one(&objects, "StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
            );
        let drains =
            settings.delivery.shutdown_drain_timeout_ms + settings.kafka.revoke_drain_timeout_ms;
        assert!(
            grace_ms as u128 > drains.as_millis(),
            "{set:?}: grace {grace_ms} ms, drains {drains:?}"
        );
    }
}

#[test]
fn static_membership_uses_the_stable_pod_name() {
    for set in value_sets() {
        let objects = render(&set);
        let settings = load_settings(&config_toml(&objects));
        let statefulset = one(&objects, "StatefulSet");
        let values: String = set
            .as_ref()
            .map(|f| std::fs::read_to_string(f).unwrap())
            .unwrap_or_default();
        let off = values.contains("staticMembership:\n  enabled: false");
        assert_eq!(
            settings.kafka.group_instance_id_from_hostname, !off,
            "{set:?}"
        );
        // A StatefulSet's pod name is the hostname paysync takes.
        assert!(statefulset["spec"]["serviceName"].as_str().is_some());
        let pdbs = of_kind(&objects, "PodDisruptionBudget");
        if let Some(pdb) = pdbs.first() {
            assert_eq!(int(&pdb["spec"]["maxUnavailable"]), 1);
        }
    }
}

#[test]
fn the_pods_run_locked_down() {
    for set in value_sets() {
        let objects = render(&set);
        let pod = &one(&objects, "StatefulSet")["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
        let security = &pod["containers"][0]["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
        assert_eq!(security["capabilities"]["drop"][0].as_str(), Some("ALL"));
        let resources = &pod["containers"][0]["resources"];
        assert!(resources["limits"]["memory"].as_str().is_some());
        assert!(resources["requests"]["memory"].as_str().is_some());
    }
}

fn monitoring_set() -> Vec<Yaml> {
    render(&Some(root().join("deploy/helm/ci/monitoring-on.yaml")))
}

#[test]
fn the_prometheus_rule_is_dashboards_alerts_yml() {
    let objects = monitoring_set();
    let rule = one(&objects, "PrometheusRule");
    let text = std::fs::read_to_string(root().join("dashboards/alerts.yml")).unwrap();
    let alerts = YamlLoader::load_from_str(&text).unwrap().remove(0);
    assert_eq!(rule["spec"], alerts);
}

#[test]
fn the_dashboard_is_dashboards_paysync_json_and_uses_exported_metrics() {
    let objects = monitoring_set();
    let map = of_kind(&objects, "ConfigMap")
        .into_iter()
        .find(|c| !c["data"]["paysync.json"].is_badvalue())
        .expect("the dashboard ConfigMap");
    assert_eq!(
        map["metadata"]["labels"]["grafana_dashboard"].as_str(),
        Some("1")
    );
    let rendered: serde_json::Value =
        serde_json::from_str(map["data"]["paysync.json"].as_str().unwrap()).unwrap();
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dashboards/paysync.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rendered, file);

    let exported = metrics_used::exported(root());
    let used = metrics_used::metric_names(&rendered.to_string());
    for name in &used {
        assert!(
            exported.contains(name),
            "the dashboard uses {name}, which paysync does not export"
        );
    }
    assert!(used.len() > 10, "the dashboard queries paysync's metrics");
}

#[test]
fn keda_scales_the_statefulset_on_lag_within_what_the_quota_can_use() {
    let objects = monitoring_set();
    let scaled = one(&objects, "ScaledObject");
    let statefulset = one(&objects, "StatefulSet");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["kind"].as_str(),
        Some("StatefulSet")
    );
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"].as_str(),
        statefulset["metadata"]["name"].as_str()
    );
    assert!(
        statefulset["spec"]["replicas"].is_badvalue(),
        "KEDA sets the replicas, not the chart"
    );
    let modifiers = &scaled["spec"]["advanced"]["scalingModifiers"];
    assert_eq!(modifiers["target"].as_str(), Some("2000"));
    assert_eq!(
        modifiers["formula"].as_str(),
        Some("min(lag, quota_replicas * 2000)"),
        "never more replicas than the quota can use"
    );
    let triggers = scaled["spec"]["triggers"].as_vec().unwrap();
    let names: Vec<&str> = triggers.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["lag", "quota_replicas"], "the formula's names");
    let exported = metrics_used::exported(root());
    for trigger in triggers {
        let query = trigger["metadata"]["query"].as_str().unwrap();
        let used = metrics_used::metric_names(query);
        assert!(!used.is_empty(), "{query}");
        for name in used {
            assert!(
                exported.contains(&name),
                "{query} uses {name}, which paysync does not export"
            );
        }
        assert!(
            query.contains("service=\"paysync\""),
            "selects the release: {query}"
        );
    }
    // Off by default, and the chart keeps its replica count then.
    let default = render(&None);
    assert!(of_kind(&default, "ScaledObject").is_empty());
    assert_eq!(int(&one(&default, "StatefulSet")["spec"]["replicas"]), 3);
}

#[test]
fn keda_bounds_that_cannot_work_are_refused() {
    for extra in [
        [
            "--set",
            "keda.enabled=true,keda.minReplicas=4,keda.maxReplicas=2",
        ],
        ["--set", "keda.enabled=true,keda.minReplicas=0"],
        ["--set", "keda.enabled=true,keda.lagPerReplica=0"],
    ] {
        let error = try_render(&None, &extra).expect_err("refused");
        assert!(error.contains("keda"), "{error}");
    }
}

#[test]
fn the_reconciliation_cronjob_reads_the_pods_configuration_and_secrets() {
    let mut rendered = 0;
    for set in value_sets() {
        let objects = render(&set);
        let jobs = of_kind(&objects, "CronJob");
        let Some(job) = jobs.first() else {
            continue;
        };
        rendered += 1;
        let pod = &job["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        let reconcile = &pod["containers"][0];
        let args: Vec<&str> = reconcile["args"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "reconcile",
                "--config",
                "/etc/paysync/paysync.toml",
                "--date",
                "yesterday",
                "--send"
            ],
            "{set:?}"
        );
        let pods = container(&objects);
        assert_eq!(reconcile["volumeMounts"], pods["volumeMounts"], "{set:?}");
        assert_eq!(reconcile["env"], pods["env"], "{set:?}");
        let statefulset = one(&objects, "StatefulSet");
        assert_eq!(
            pod["volumes"], statefulset["spec"]["template"]["spec"]["volumes"],
            "{set:?}"
        );
    }
    assert!(rendered > 0, "no value set enables reconcile.enabled");
}

#[test]
fn the_console_pod_serves_the_console_with_its_users_from_the_secret() {
    let objects = render(&Some(root().join("deploy/helm/ci/console-on.yaml")));
    let deployment = one(&objects, "Deployment");
    let console = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = console["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(args, ["console", "--config", "/etc/paysync/paysync.toml"]);
    let port = int(&named(&console["ports"], "console")["containerPort"]);
    let listen = env_value(console, "PAYSYNC_CONSOLE__LISTEN").unwrap();
    assert_eq!(listen, format!("0.0.0.0:{port}"));
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(
            console[probe]["httpGet"]["path"].as_str(),
            Some(format!("{}/login", paysync::console::views::BASE).as_str())
        );
    }
    // The users file is the Secret's key, mounted where the variable says.
    let users = env_value(console, "PAYSYNC_CONSOLE__USERS_FILE").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    let item = named(&pod["volumes"], "console-users")["secret"]["items"][0]["path"]
        .as_str()
        .unwrap();
    let mount = named(&console["volumeMounts"], "console-users")["mountPath"]
        .as_str()
        .unwrap();
    assert_eq!(users, format!("{mount}/{item}"));
    // The configuration, with the pod's variables, passes paysync's checks.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("paysync.toml");
    std::fs::write(&config, config_toml(&objects)).unwrap();
    let secret = dir.path().join("app-secret");
    std::fs::write(&secret, "not-a-real-secret\n").unwrap();
    let settings = Settings::load_from(
        Some(&config),
        vec![
            (
                "PAYSYNC_TOP__APP_SECRET_FILE".to_owned(),
                secret.display().to_string(),
            ),
            ("PAYSYNC_CONSOLE__LISTEN".to_owned(), listen.to_owned()),
            (
                "PAYSYNC_CONSOLE__ALLOW_REMOTE".to_owned(),
                env_value(console, "PAYSYNC_CONSOLE__ALLOW_REMOTE")
                    .unwrap()
                    .to_owned(),
            ),
            ("PAYSYNC_CONSOLE__USERS_FILE".to_owned(), users.to_owned()),
            (
                "PAYSYNC_CONSOLE__TRACE_URL".to_owned(),
                env_value(console, "PAYSYNC_CONSOLE__TRACE_URL")
                    .unwrap()
                    .to_owned(),
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(settings.console.secure_cookie(), "behind the Ingress's TLS");
    // The Ingress sends /console to the console's Service.
    let ingress = one(&objects, "Ingress");
    let path = &ingress["spec"]["rules"][0]["http"]["paths"][0];
    assert_eq!(path["path"].as_str(), Some(paysync::console::views::BASE));
    assert_eq!(
        path["backend"]["service"]["port"]["name"].as_str(),
        Some("console")
    );
    // Off by default: no console pod.
    assert!(of_kind(&render(&None), "Deployment").is_empty());
}
