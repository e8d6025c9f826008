//! The published contracts stay true: `proto-docs/openapi.json` equals the served document,
//! `proto-docs/errors.md` lists exactly the error catalogue, and Swagger UI is served offline.

use reqwest::StatusCode;

use crate::support::*;

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn served_openapi_equals_proto_docs_and_swagger_ui_renders_offline() {
    let s = Session::start().await;
    let served: serde_json::Value =
        expect_status(s.client.get(s.url("/api-docs/openapi.json")).send().await.unwrap(), StatusCode::OK).await;
    let generated = serde_json::to_value(ota_api::openapi()).unwrap();
    assert_eq!(served, generated);
    assert!(served["openapi"].as_str().unwrap().starts_with("3.1"));
    let committed: serde_json::Value = serde_json::from_str(&repo_file("proto-docs/openapi.json")).unwrap();
    if committed != served {
        let pretty = serde_json::to_string_pretty(&served).unwrap();
        std::fs::write(std::env::temp_dir().join("openapi.json"), pretty).unwrap();
        panic!(
            "proto-docs/openapi.json is stale; regenerate it with `cargo run --bin ota -- openapi > proto-docs/openapi.json` \
             (the served document was written to {})",
            std::env::temp_dir().join("openapi.json").display()
        );
    }
    for path in
        ["/api/v1/products/{product_key}/firmware", "/api/v1/firmware/{id}/file", "/api/v1/auth/login", "/readyz"]
    {
        assert!(served["paths"].get(path).is_some(), "{path} missing from the document");
    }

    let r = s.client.get(s.url("/docs")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "redirect followed to the UI");
    let html = r.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "{html}");
    let r = s.client.get(s.url("/docs/swagger-ui-bundle.js")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap().len() > 100_000, "the UI's script is served from the binary");
    let init = s.client.get(s.url("/docs/swagger-initializer.js")).send().await.unwrap().text().await.unwrap();
    assert!(init.contains("/api-docs/openapi.json"), "{init}");
    assert!(!init.contains("https://"), "nothing is loaded from the internet: {init}");

    let v = expect_status(s.client.get(s.url("/healthz")).send().await.unwrap(), StatusCode::OK).await;
    assert_eq!(v["status"], "ok");
    let v = expect_status(s.client.get(s.url("/readyz")).send().await.unwrap(), StatusCode::OK).await;
    assert_eq!(v["status"], "ok");
}

#[test]
fn errors_md_lists_exactly_the_catalogue() {
    let doc = repo_file("proto-docs/errors.md");
    let rows: Vec<(String, u16)> = doc
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((code.to_owned(), cells.get(2)?.parse().ok()?))
        })
        .collect();
    let catalogue: Vec<(String, u16)> =
        ota_wire::ErrorCode::ALL.iter().map(|c| (c.as_str().to_owned(), c.http_status())).collect();
    assert_eq!(rows, catalogue, "proto-docs/errors.md must list every code with its status, in catalogue order");
}
