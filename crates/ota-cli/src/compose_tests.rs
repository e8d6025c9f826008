//! `docker-compose.yml` checked against the server it runs (no container engine runs here):
//! the services and roles of the scaled-out topology, published device ports that match the
//! binds and what provision hands out, health checks on the ports the nodes really serve, the
//! shared S3 store (MinIO, its bucket created before any node starts, no shared volume), and only `OTA_*` names the server reads
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
    // One-shot services (waited for until they completed) have nothing to check.
    let mut one_shot = Vec::new();
    for (_, service) in doc["services"].as_hash().unwrap() {
        if let Some(deps) = merged(service)["depends_on"].as_hash() {
            for (dep, how) in deps {
                if how["condition"].as_str() == Some("service_completed_successfully") {
                    one_shot.push(scalar(dep));
                }
            }
        }
    }
    for (name, service) in doc["services"].as_hash().unwrap() {
        let name = scalar(name);
        if one_shot.contains(&name) {
            assert_eq!(merged(service)["restart"].as_str(), Some("no"), "{name} runs once");
            continue;
        }
        let test = strings(&merged(service)["healthcheck"]["test"]);
        assert!(!test.is_empty(), "{name} has no health check");
    }
    for n in nodes(&doc) {
        let test = strings(&n.service["healthcheck"]["test"]).join(" ");
        let port = if n.role.serves_api() { port_of(&n.config.api_bind) } else { port_of(&n.config.device_http_bind) };
        let ok = ["/readyz", "/healthz"].iter().any(|p| test.contains(&format!("127.0.0.1:{port}{p}")));
        assert!(ok, "{}: health check `{test}` does not ask port {port}", n.name);
    }
}

/// The services `name` waits for, directly or through the services it waits for, with the
/// condition of the direct wait.
fn waits_for(doc: &Yaml, name: &str, out: &mut BTreeMap<String, String>) {
    let service = merged(&doc["services"][name]);
    let Some(deps) = service["depends_on"].as_hash() else { return };
    for (dep, how) in deps {
        let dep = scalar(dep);
        let condition = how["condition"].as_str().unwrap_or("service_started").to_owned();
        if out.insert(dep.clone(), condition).is_none() {
            waits_for(doc, &dep, out);
        }
    }
}

#[test]
fn every_node_uses_the_shared_s3_store_and_no_shared_volume() {
    let doc = compose();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let image_data_dir = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ENV OTA_DATA_DIR="))
        .expect("the image sets OTA_DATA_DIR")
        .trim()
        .to_owned();
    let nodes = nodes(&doc);
    let mut stores = Vec::new();
    for n in &nodes {
        assert_eq!(n.config.firmware_store, super::FirmwareStore::S3, "{} does not use the shared store", n.name);
        let s3 = n.config.s3_settings().unwrap_or_else(|e| panic!("{}: {e}", n.name));
        // Nothing on disk is shared: no volume at all, and the cache is in the node's own data
        // directory (the image's, `firmware-cache` under it).
        let mounts = strings(&n.service["volumes"]);
        assert!(mounts.is_empty(), "{} mounts {mounts:?}; the nodes share nothing but the bucket", n.name);
        assert!(!n.env.contains_key("OTA_DATA_DIR"), "{}: the image's data directory ({image_data_dir})", n.name);
        assert_eq!(n.config.firmware_cache_dir, None, "{}: the cache follows the data directory", n.name);
        assert!(s3.cache_dir.ends_with("firmware-cache"), "{}", n.name);
        // The node starts after the bucket exists.
        let mut waits = BTreeMap::new();
        waits_for(&doc, &n.name, &mut waits);
        stores.push((s3, waits));
    }
    let (first, _) = &stores[0];
    for (s3, _) in &stores {
        assert_eq!((&s3.endpoint, &s3.bucket, &s3.prefix), (&first.endpoint, &first.bucket, &first.prefix));
    }
    // The endpoint is the MinIO service of this file, with the nodes' credentials as its root
    // user, and the init service creates the bucket the nodes name.
    let host = first.endpoint.trim_start_matches("http://").split([':', '/']).next().unwrap().to_owned();
    let minio = merged(&doc["services"][host.as_str()]);
    assert!(!minio.is_badvalue(), "{}: no service `{host}`", first.endpoint);
    assert_eq!(minio["environment"]["MINIO_ROOT_USER"].as_str(), Some(first.access_key_id.as_str()));
    assert_eq!(minio["environment"]["MINIO_ROOT_PASSWORD"].as_str(), Some(first.secret_access_key.as_str()));
    assert!(!strings(&minio["healthcheck"]["test"]).is_empty(), "{host} has no health check");
    let (init, _) = doc["services"]
        .as_hash()
        .unwrap()
        .iter()
        .find(|(_, s)| {
            strings(&s["entrypoint"]).join(" ").contains(&format!("mc mb --ignore-existing local/{}", first.bucket))
        })
        .unwrap_or_else(|| panic!("no service creates the bucket `{}`", first.bucket));
    let init = scalar(init);
    let init_cmd = strings(&doc["services"][init.as_str()]["entrypoint"]).join(" ");
    assert!(
        init_cmd.contains(&format!("http://{host}:9000 {} {}", first.access_key_id, first.secret_access_key)),
        "{init} does not log in to {host} as the nodes do: {init_cmd}"
    );
    for ((_, waits), n) in stores.iter().zip(&nodes) {
        assert!(waits.contains_key(&init), "{} may start before the bucket exists: {waits:?}", n.name);
    }
    let api = nodes.iter().find(|n| n.role == Role::Api).unwrap();
    assert_eq!(
        merged(&doc["services"][api.name.as_str()])["depends_on"][init.as_str()]["condition"].as_str(),
        Some("service_completed_successfully")
    );
}

#[test]
fn the_build_context_leaves_out_build_output_data_and_history() {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for needed in ["target/", "data/", ".git/", "*.db"] {
        assert!(lines.contains(&needed), ".dockerignore lacks {needed}");
    }
}
