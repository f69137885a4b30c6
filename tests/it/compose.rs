//! No Docker engine runs here, so the dev stack is kept honest by reading it: every `BRIDGE_*`
//! variable docker-compose.yml sets must be one the bridge reads, every `DIRECTORY_*` one
//! tim-group-directory reads, and the image must carry both binaries.

use tim_kafka_bridge::configuration::{RDKAFKA_PREFIX, VARIABLES};

use crate::helpers::repo;

#[test]
fn every_bridge_variable_in_docker_compose_is_one_the_bridge_knows() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    let doc: serde_norway::Value = serde_norway::from_str(&text).expect("docker-compose.yml is YAML");
    let services = doc["services"].as_mapping().expect("services");
    let mut seen = 0;
    for (name, service) in services {
        let names: Vec<String> = match &service["environment"] {
            serde_norway::Value::Mapping(m) => {
                m.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect()
            }
            serde_norway::Value::Sequence(s) => {
                s.iter().filter_map(|e| e.as_str().map(|e| e.split('=').next().unwrap().to_owned())).collect()
            }
            _ => Vec::new(),
        };
        for var in names.iter().filter(|n| n.starts_with("BRIDGE_")) {
            seen += 1;
            let known = VARIABLES.iter().any(|v| v.name == var) || var.starts_with(RDKAFKA_PREFIX);
            assert!(known, "service {name:?} sets {var}, which the bridge does not read");
        }
    }
    assert!(seen > 0, "docker-compose.yml configures the bridge");
    let bridge = &services[&serde_norway::Value::from("bridge")];
    assert!(
        bridge["build"].is_mapping() || bridge["build"].is_string(),
        "the bridge is built from the Dockerfile"
    );
}

#[test]
fn prometheus_scrapes_the_admin_port_the_compose_file_gives_the_bridge() {
    let compose: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap()).unwrap();
    let bridge = &compose["services"]["bridge"];
    let admin =
        bridge["environment"]["BRIDGE_ADMIN_LISTEN"].as_str().expect("the bridge sets BRIDGE_ADMIN_LISTEN");
    let admin_port = admin.rsplit(':').next().unwrap();
    let published: Vec<&str> =
        bridge["ports"].as_sequence().unwrap().iter().filter_map(|p| p.as_str()).collect();
    assert!(published.iter().any(|p| p.ends_with(&format!(":{admin_port}"))), "{published:?}");

    let prometheus: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let target = prometheus["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str().unwrap();
    assert_eq!(target, format!("bridge:{admin_port}"), "Prometheus scrapes the admin listener");
}

#[test]
fn every_bridge_variable_in_the_kubernetes_base_is_one_the_bridge_knows_and_parses() {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/bridge.env")).unwrap();
    let vars: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    for (k, _) in vars.iter().filter(|(k, _)| k.starts_with("BRIDGE_")) {
        let known = VARIABLES.iter().any(|v| v.name == k) || k.starts_with(RDKAFKA_PREFIX);
        assert!(known, "bridge.env sets {k}, which the bridge does not read");
    }
    // And the bridge takes them as they are.
    tim_kafka_bridge::configuration::Settings::from_vars(vars).expect("bridge.env parses");
}

#[test]
fn the_directory_service_runs_tim_group_directory_from_the_bridge_image_with_variables_it_knows() {
    let compose: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap()).unwrap();
    let (bridge, directory) = (&compose["services"]["bridge"], &compose["services"]["directory"]);
    assert!(directory.is_mapping(), "docker-compose.yml runs the directory");
    assert_eq!(directory["image"], bridge["image"], "the directory runs the bridge's image");
    assert!(directory["image"].is_string());
    let entrypoint = serde_norway::to_string(&directory["entrypoint"]).unwrap();
    assert!(entrypoint.contains("/usr/local/bin/tim-group-directory"), "{entrypoint}");
    let env = directory["environment"].as_mapping().expect("environment as a mapping");
    for k in env.keys().filter_map(|k| k.as_str()).filter(|k| k.starts_with("DIRECTORY_")) {
        assert!(
            tim_group_directory::VARIABLES.iter().any(|v| v.0 == k),
            "the directory service sets {k}, which tim-group-directory does not read"
        );
    }
    assert_eq!(env[&serde_norway::Value::from("DIRECTORY_TOPIC")], bridge["environment"]["BRIDGE_TOPIC"]);
    assert_eq!(
        env[&serde_norway::Value::from("DIRECTORY_KAFKA_BROKERS")],
        bridge["environment"]["BRIDGE_KAFKA_BROKERS"]
    );

    // The image has the binary: built with its feature, and copied into the runtime stage.
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("--features directory --bin tim-group-directory"),
        "the Dockerfile builds it"
    );
    assert!(dockerfile.contains("/src/target/release/tim-group-directory /usr/local/bin/tim-group-directory"));
}
