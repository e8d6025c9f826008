//! `docker-compose.yml` checked against the server it runs (no container engine runs here):
//! the services and roles of the scaled-out topology, published device ports that match the
//! binds and what provision hands out, health checks on the ports the nodes really serve, one
//! firmware volume at every node's firmware directory, and only `OTA_*` names the server reads
//! (from [`Config::keys`], not a copied list). Each node's environment is loaded through
//! [`Config::load`] as the server would.

use std::collections::BTreeMap;
use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

use super::{Config, Role};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// Resolves YAML merge keys (`<<: *anchor`) the way compose does: the node's own keys win.
fn merged(node: &Yaml) -> Yaml {
    match node {
        Yaml::Hash(h) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            if let Some(Yaml::Hash(base)) = h.get(&Yaml::String("<<".into())).map(merged) {
                out.extend(base);
            }
            for (k, v) in h {
                if k.as_str() != Some("<<") {
                    out.insert(k.clone(), merged(v));
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(a) => Yaml::Array(a.iter().map(merged).collect()),
        other => other.clone(),
    }
}

fn scalar(y: &Yaml) -> String {
    match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec().map(|v| v.iter().map(scalar).collect()).unwrap_or_default()
}

/// `${NAME:-default}` as compose interpolates it with NAME unset.
fn interpolate(value: &str) -> String {
    match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')).and_then(|v| v.split_once(":-")) {
        Some((name, default)) => {
            assert!(!name.starts_with("OTA_"), "`{name}` would reach the server as a setting of its own");
            default.to_owned()
        }
        None => value.to_owned(),
    }
}

struct Node {
    name: String,
    service: Yaml,
    role: Role,
    env: BTreeMap<String, String>,
    config: Config,
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr}"))
}

/// `host:container` pairs published by a service.
fn published(service: &Yaml) -> Vec<(u16, u16)> {
    strings(&service["ports"])
        .iter()
        .map(|p| {
            let (host, container) = p.rsplit_once(':').unwrap_or_else(|| panic!("`{p}` publishes no host port"));
            (host.parse().unwrap(), container.parse().unwrap())
        })
        .collect()
}

/// The `ota up` services, each with its environment loaded as the server loads it.
#[allow(clippy::result_large_err)]
fn nodes(doc: &Yaml) -> Vec<Node> {
    let services = doc["services"].as_hash().expect("services");
    let mut out = Vec::new();
    for (name, service) in services {
        let service = merged(service);
        let command = strings(&service["command"]);
        if command.first().map(String::as_str) != Some("up") {
            continue;
        }
        let name = scalar(name);
        let role = match command.iter().position(|a| a == "--role").map(|i| command[i + 1].as_str()) {
            Some("api") => Role::Api,
            Some("gateway") => Role::Gateway,
            Some("all") | None => Role::All,
            Some(other) => panic!("{name}: unknown role {other}"),
        };
        let env: BTreeMap<String, String> = service["environment"]
            .as_hash()
            .unwrap_or_else(|| panic!("{name}: environment as a map"))
            .iter()
            .map(|(k, v)| (scalar(k), interpolate(&scalar(v))))
            .collect();
        let mut config = None;
        figment::Jail::expect_with(|jail| {
            for (k, v) in &env {
                jail.set_env(k, v);
            }
            config = Some(Config::load(None).map_err(|e| format!("{name}: {e}"))?);
            Ok(())
        });
        out.push(Node { name, service, role, env, config: config.unwrap() });
    }
    out
}

#[test]
fn the_compose_file_runs_one_api_node_and_two_gateways_on_postgresql_and_mosquitto() {
    let doc = compose();
    let services = doc["services"].as_hash().unwrap();
    let names: Vec<String> = services.keys().map(scalar).collect();
    for needed in ["postgres", "mosquitto"] {
        assert!(names.iter().any(|n| n == needed), "no {needed} service: {names:?}");
    }
    let nodes = nodes(&doc);
    let roles: Vec<Role> = nodes.iter().map(|n| n.role).collect();
    assert_eq!(roles.iter().filter(|r| **r == Role::Api).count(), 1, "{roles:?}");
    assert_eq!(roles.iter().filter(|r| **r == Role::Gateway).count(), 2, "{roles:?}");
    for n in &nodes {
        assert!(n.config.database_url().starts_with("postgres://"), "{}", n.name);
        assert!(n.config.database_url().contains("@postgres:5432/"), "{}: {}", n.name, n.config.database_url());
        match n.config.bus().unwrap() {
            ota_gateway::BusConfig::External { host, port, .. } => {
                assert_eq!((host.as_str(), port), ("mosquitto", 1883), "{}", n.name)
            }
            other => panic!("{}: the nodes need the shared broker, not {other:?}", n.name),
        }
        // Started after the database (and, for the gateways, the API node that migrated it).
        assert!(!n.service["depends_on"].is_badvalue(), "{} has no depends_on", n.name);
    }
    // Gateways have ids of their own (their containers have data directories of their own).
    let mut ids: Vec<Option<String>> =
        nodes.iter().filter(|n| n.role == Role::Gateway).map(|n| n.config.node_id.clone()).collect();
    ids.dedup();
    assert!(ids.iter().all(Option::is_some) && ids.len() == 2, "{ids:?}");
}

#[test]
fn every_ota_name_in_the_compose_file_is_one_the_server_reads() {
    let doc = compose();
    let known: Vec<String> = Config::keys().iter().map(|k| Config::env_name(k)).collect();
    for n in nodes(&doc) {
        for name in n.env.keys().filter(|k| k.starts_with("OTA_")) {
            assert!(known.contains(name) || name == "OTA_LOG", "{}: {name} is no setting of the server", n.name);
        }
        assert!(n.env.keys().all(|k| k.starts_with("OTA_")), "{}: {:?}", n.name, n.env.keys());
    }
    // The provision host comes from an interpolated variable with a default.
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    assert!(text.contains("OTA_DEVICE_PUBLIC_HOST: ${DEVICE_PUBLIC_HOST:-"), "the provision host is not configurable");
}

#[test]
fn the_compose_file_publishes_the_device_ports_it_binds() {
    let nodes = nodes(&compose());
    let api = nodes.iter().find(|n| n.role == Role::Api).unwrap();
    let api_port = port_of(&api.config.api_bind);
    assert!(published(&api.service).iter().any(|(_, c)| *c == api_port), "{} publishes no API port", api.name);
    let mut http80 = false;
    let mut mqtt1883 = false;
    for g in nodes.iter().filter(|n| n.role == Role::Gateway) {
        let ports = published(&g.service);
        let http = port_of(&g.config.device_http_bind);
        let mqtt = port_of(&g.config.device_mqtt_bind);
        let host_http = ports.iter().find(|(_, c)| *c == http).map(|(h, _)| *h);
        let host_mqtt = ports.iter().find(|(_, c)| *c == mqtt).map(|(h, _)| *h);
        let (Some(host_http), Some(host_mqtt)) = (host_http, host_mqtt) else {
            panic!("{} does not publish its device HTTP ({http}) and MQTT ({mqtt}) ports: {ports:?}", g.name);
        };
        // Provision hands out the port devices can reach.
        assert_eq!(g.config.device_mqtt_port, Some(host_mqtt), "{}: provision hands out another port", g.name);
        http80 |= host_http == 80;
        mqtt1883 |= host_mqtt == 1883;
    }
    assert!(http80 && mqtt1883, "no gateway on ports 80 and 1883 of the host");
}

#[test]
fn every_service_has_a_health_check_and_the_nodes_ask_their_own_ports() {
    let doc = compose();
    for (name, service) in doc["services"].as_hash().unwrap() {
        let test = strings(&merged(service)["healthcheck"]["test"]);
        assert!(!test.is_empty(), "{} has no health check", scalar(name));
    }
    for n in nodes(&doc) {
        let test = strings(&n.service["healthcheck"]["test"]).join(" ");
        let port = if n.role.serves_api() { port_of(&n.config.api_bind) } else { port_of(&n.config.device_http_bind) };
        let ok = ["/readyz", "/healthz"].iter().any(|p| test.contains(&format!("127.0.0.1:{port}{p}")));
        assert!(ok, "{}: health check `{test}` does not ask port {port}", n.name);
    }
}

#[test]
fn every_node_mounts_one_shared_firmware_volume_at_its_firmware_directory() {
    let doc = compose();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let image_data_dir = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ENV OTA_DATA_DIR="))
        .expect("the image sets OTA_DATA_DIR")
        .trim()
        .to_owned();
    let declared: Vec<String> = doc["volumes"].as_hash().unwrap().keys().map(scalar).collect();
    let mut volumes = Vec::new();
    for n in nodes(&doc) {
        let data_dir = n.env.get("OTA_DATA_DIR").cloned().unwrap_or_else(|| image_data_dir.clone());
        let firmware_dir = format!("{data_dir}/firmware");
        let mounts = strings(&n.service["volumes"]);
        let volume = mounts
            .iter()
            .find_map(|m| m.split_once(':').filter(|(_, target)| *target == firmware_dir).map(|(v, _)| v.to_owned()))
            .unwrap_or_else(|| panic!("{} mounts nothing at {firmware_dir}: {mounts:?}", n.name));
        assert!(declared.contains(&volume), "{volume} is not a named volume");
        volumes.push(volume);
    }
    volumes.dedup();
    assert_eq!(volumes.len(), 1, "the nodes do not share one firmware volume: {volumes:?}");
}

#[test]
fn the_build_context_leaves_out_build_output_data_and_history() {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for needed in ["target/", "data/", ".git/", "*.db"] {
        assert!(lines.contains(&needed), ".dockerignore lacks {needed}");
    }
}
