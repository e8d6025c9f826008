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

#[tokio::test]
async fn the_document_has_no_dangling_references_and_secured_operations_document_401() {
    let doc = serde_json::to_value(ota_api::openapi()).unwrap();
    let text = doc.to_string();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(schemas.contains_key(name), "#/components/schemas/{name} is referenced but not defined");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                assert!(response["description"].as_str().is_some_and(|d| !d.is_empty()), "{method} {path} {status}");
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
            if op.get("security").is_some() {
                assert!(responses.contains_key("401"), "{method} {path} does not document 401");
            }
            if path != "/healthz" {
                assert!(responses.contains_key("503"), "{method} {path} does not document 503");
            }
        }
    }
}

#[tokio::test]
async fn unknown_methods_answer_405_with_allow_and_unknown_routes_404() {
    let s = Session::start().await;
    let r = s.client.put(s.url("/api/v1/products")).bearer_auth(&s.token).send().await.unwrap();
    let allow = r.headers()["allow"].to_str().unwrap().to_owned();
    let v = expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    assert_eq!(allow, "GET, POST");
    assert_eq!(v["details"]["allow"], serde_json::json!(["GET", "POST"]));
    let r = s.client.delete(s.url("/api/v1/rules/7/start")).send().await.unwrap();
    assert_eq!(r.headers()["allow"], "POST");
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let r = s.client.get(s.url("/api/v1/nothing/here")).send().await.unwrap();
    expect_error(r, StatusCode::NOT_FOUND, "route_not_found").await;
}

#[tokio::test]
async fn json_validation_errors_name_the_field() {
    let s = Session::start().await;
    let cases = [
        ("/api/v1/products", serde_json::json!({}), "missing_field", "name"),
        ("/api/v1/products", serde_json::json!({"name": 5}), "invalid_field", "name"),
        ("/api/v1/products", serde_json::json!({"name": "   "}), "invalid_field", "name"),
        ("/api/v1/tokens", serde_json::json!({"name": "x", "scopes": ["root"]}), "invalid_field", "scopes[0]"),
        (
            "/api/v1/tokens",
            serde_json::json!({"name": "x", "scopes": ["read"], "expires_in_days": -1}),
            "invalid_field",
            "expires_in_days",
        ),
        ("/api/v1/products", serde_json::json!([{"name": "x"}]), "invalid_json", ""),
    ];
    for (path, body, code, field) in cases {
        let v = expect_error(s.post(path, body.clone()).await, StatusCode::BAD_REQUEST, code).await;
        if !field.is_empty() {
            assert_eq!(v["details"]["field"], field, "{body}");
        }
    }
    // A schema integer written as a float is an integer.
    let v =
        s.post("/api/v1/tokens", serde_json::json!({"name": "f", "scopes": ["read"], "expires_in_days": 3.0})).await;
    expect_status(v, StatusCode::CREATED).await;
    // Nested fields are named by their path.
    let fw = crate::support::form(
        &[
            ("name", "v1"),
            ("type", "wifi"),
            ("push_method", "V4.1"),
            ("hard_version", "00ESP826"),
            ("soft_version", "04020021"),
        ],
        Some(("GAgent.bin", crate::support::image(2048, 1))),
    );
    let pk = s.create_product("lamp").await;
    let created = expect_status(s.upload(&pk, fw).await, StatusCode::CREATED).await;
    let body = serde_json::json!({"target": "all", "old_versions": ["04020006"], "period": {"start": "2026-12-01"}, "daily_window": {"start_hour": 0, "end_hour": 24}});
    let v = expect_error(
        s.post(&format!("/api/v1/firmware/{}/rules", created["id"]), body).await,
        StatusCode::BAD_REQUEST,
        "missing_field",
    )
    .await;
    assert_eq!(v["details"]["field"], "period.end");
}
