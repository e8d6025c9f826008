//! The README's shell examples are safe to paste into a script: every `curl` fails on an
//! HTTP error (printing the error body), no date is fixed (an example must not stop working
//! on a given day), rules are only started on firmware the walkthrough confirmed, and the
//! configuration table lists every key of `ota.example.toml` (itself kept equal to the
//! configuration struct by a unit test).

use std::path::Path;

fn read(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(name)).unwrap()
}

/// The lines of the README's ```sh blocks, with their line numbers.
fn shell_lines(readme: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    for (i, line) in readme.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("```") {
            inside = !inside && t == "```sh";
            continue;
        }
        if inside {
            out.push((i + 1, line.to_owned()));
        }
    }
    out
}

/// `$NAME` right after `prefix` in `line`, each time.
fn vars_after(line: &str, prefix: &str) -> Vec<String> {
    line.match_indices(prefix)
        .filter_map(|(i, _)| {
            let rest = &line[i + prefix.len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

#[test]
fn every_curl_in_the_readme_fails_on_an_http_error() {
    let readme = read("README.md");
    let lines = shell_lines(&readme);
    assert!(lines.iter().filter(|(_, l)| l.contains("curl ")).count() > 20, "the examples were not found");
    for (n, line) in lines.iter().filter(|(_, l)| !l.trim_start().starts_with('#')) {
        for (i, _) in line.match_indices("curl ") {
            let call = &line[i..];
            let fails = call.contains("--fail-with-body")
                || call.contains("--fail ")
                || call
                    .split(' ')
                    .any(|w| w.starts_with('-') && !w.starts_with("--") && w.contains('f') && !w.contains('F'));
            assert!(fails, "README.md:{n}: curl without --fail-with-body: {line}");
        }
    }
}

#[test]
fn no_readme_example_carries_a_fixed_date() {
    let readme = read("README.md");
    let is_date =
        |w: &[u8]| w.iter().enumerate().all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() });
    for (n, line) in shell_lines(&readme) {
        // Output shown in comments may quote dates; commands may not.
        let command = line.split('#').next().unwrap_or_default();
        assert!(!command.as_bytes().windows(10).any(is_date), "README.md:{n}: a fixed date: {line}");
    }
}

#[test]
fn the_rules_walkthrough_only_starts_rules_on_firmware_it_confirmed() {
    let readme = read("README.md");
    let mut confirmed: Vec<String> = Vec::new();
    let mut ruled = 0;
    for (n, line) in shell_lines(&readme) {
        confirmed.extend(vars_after(&line, "confirm $"));
        confirmed
            .extend(vars_after(&line, "/firmware/$").into_iter().filter(|_| line.contains("/verification/confirm")));
        for fw in vars_after(&line, "/api/v1/firmware/$") {
            let creates_rule = line.contains(&format!("/firmware/${fw}/rules\""));
            if creates_rule {
                ruled += 1;
                assert!(confirmed.contains(&fw), "README.md:{n}: a rule on ${fw}, which was never confirmed: {line}");
            }
        }
    }
    assert!(ruled >= 2, "the rules walkthrough was not found");
}

#[test]
fn the_configuration_table_lists_every_key() {
    let readme = read("README.md");
    let section = readme.split("## Configuration").nth(1).expect("a Configuration section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let example = read("ota.example.toml");
    let mut keys = 0;
    for line in example.lines() {
        let line = line.trim_start_matches('#').trim();
        let Some((key, _)) = line.split_once('=') else { continue };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            continue;
        }
        keys += 1;
        assert!(section.contains(&format!("`{key}`")), "the README's configuration table lacks `{key}`");
    }
    assert!(keys > 30, "{keys} keys in ota.example.toml");
}

#[test]
fn several_gateways_runs_nodes_by_role() {
    let readme = read("README.md");
    let section = readme.split("### Several gateways").nth(1).expect("the section");
    let section = section.split("\n## ").next().unwrap_or_default();
    assert!(section.contains("ota up --role api") && section.contains("ota up --role gateway"), "{section}");
}

#[test]
fn the_metric_table_names_every_metric() {
    let readme = read("README.md");
    let section = readme.split("## Metrics and logs").nth(1).expect("a \"Metrics and logs\" section");
    for name in ota_domain::metrics::ALL {
        assert!(section.contains(&format!("`{name}`")), "README's metric table lacks `{name}`");
    }
}
