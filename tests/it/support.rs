use md5::{Digest, Md5};
use ota_testkit::TestApi;
use reqwest::multipart::{Form, Part};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "correct horse battery";

/// A logged-in client of a test API.
pub struct Session {
    pub api: TestApi,
    pub client: Client,
    pub token: String,
}

impl Session {
    /// A fresh server with tenant `acme`, its admin logged in.
    pub async fn start() -> Session {
        Self::start_on(TestApi::start()).await
    }

    /// The same on a given server (e.g. one always on PostgreSQL).
    pub async fn start_on(api: TestApi) -> Session {
        api.t.domain.create_admin("acme", ADMIN, ADMIN_PASSWORD).await.unwrap();
        let client = Client::new();
        let token = login(&client, &api, ADMIN, ADMIN_PASSWORD).await;
        Session { api, client, token }
    }

    pub fn url(&self, path: &str) -> String {
        self.api.url(path)
    }

    /// Switches to an API token with every scope and no expiry, for tests that move the fake
    /// clock past a login session's lifetime.
    pub async fn use_api_token(&mut self) {
        let body = json!({ "name": "test", "scopes": ["read", "write", "push"] });
        let created = expect_status(self.post("/api/v1/tokens", body).await, StatusCode::CREATED).await;
        self.token = created["secret"].as_str().unwrap().to_owned();
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).bearer_auth(&self.token).send().await.unwrap()
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.client.delete(self.url(path)).bearer_auth(&self.token).send().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.client.post(self.url(path)).bearer_auth(&self.token).json(&body).send().await.unwrap()
    }

    pub async fn patch(&self, path: &str, body: Value) -> Response {
        self.client.patch(self.url(path)).bearer_auth(&self.token).json(&body).send().await.unwrap()
    }

    pub async fn put(&self, path: &str, body: Value) -> Response {
        self.client.put(self.url(path)).bearer_auth(&self.token).json(&body).send().await.unwrap()
    }

    /// A text body (`text/plain`), e.g. a MAC list.
    pub async fn post_text(&self, path: &str, body: impl Into<String>) -> Response {
        let r = self.client.post(self.url(path)).bearer_auth(&self.token).header("content-type", "text/plain");
        r.body(body.into()).send().await.unwrap()
    }

    /// `POST /products/{pk}/devices/import` with a CSV body.
    pub async fn import_csv(&self, product_key: &str, csv: &str) -> Response {
        self.client
            .post(self.url(&format!("/api/v1/products/{product_key}/devices/import")))
            .bearer_auth(&self.token)
            .header("content-type", "text/csv")
            .body(csv.to_owned())
            .send()
            .await
            .unwrap()
    }

    /// Marks firmware verified through the domain, for tests whose subject is what comes
    /// after verification (the flow itself is tested in `device_plane.rs` and `rules_fleet.rs`).
    pub async fn verify_directly(&self, firmware_id: i64) {
        let tenant = self.api.t.domain.verify_login(ADMIN, ADMIN_PASSWORD).await.unwrap().tenant_id;
        self.api.t.domain.mark_firmware_verified(tenant, firmware_id).await.unwrap();
    }

    pub async fn create_product(&self, name: &str) -> String {
        let r = self.post("/api/v1/products", json!({ "name": name })).await;
        let v = expect_status(r, StatusCode::CREATED).await;
        v["product_key"].as_str().unwrap().to_owned()
    }

    pub async fn upload(&self, product_key: &str, form: Form) -> Response {
        self.client
            .post(self.url(&format!("/api/v1/products/{product_key}/firmware")))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Number of firmware rows of the product, through the API.
    pub async fn firmware_count(&self, product_key: &str) -> i64 {
        let v =
            expect_status(self.get(&format!("/api/v1/products/{product_key}/firmware")).await, StatusCode::OK).await;
        v["total"].as_i64().unwrap()
    }

    /// Files in the blob store and in staging: both empty after a refused upload.
    pub fn stored_files(&self) -> usize {
        count_files(&self.api.t.blob_dir()) + count_files(&self.api.t.staging_dir())
    }
}

fn count_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

pub async fn login(client: &Client, api: &TestApi, user: &str, password: &str) -> String {
    let r = client
        .post(api.url("/api/v1/auth/login"))
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await
        .unwrap();
    let v = expect_status(r, StatusCode::OK).await;
    v["token"].as_str().unwrap().to_owned()
}

/// Asserts the status and returns the JSON body (or `null` for an empty one).
pub async fn expect_status(r: Response, status: StatusCode) -> Value {
    let got = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(got, status, "unexpected status; body: {text}");
    if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

/// Asserts an error response: its status and stable code; returns the body.
pub async fn expect_error(r: Response, status: StatusCode, code: &str) -> Value {
    let v = expect_status(r, status).await;
    assert_eq!(v["code"], code, "unexpected error body: {v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {v}");
    v
}

/// Deterministic firmware bytes of the given size, different per seed.
pub fn image(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u32).wrapping_mul(31).wrapping_add(u32::from(seed)) as u8).collect()
}

pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

/// A multipart firmware form.
pub fn form(fields: &[(&str, &str)], file: Option<(&str, Vec<u8>)>) -> Form {
    let mut f = Form::new();
    for (k, v) in fields {
        f = f.text(k.to_string(), v.to_string());
    }
    if let Some((name, bytes)) = file {
        f = f.part("file", Part::bytes(bytes).file_name(name.to_owned()));
    }
    f
}

/// A valid Intel HEX file of at least `min_size` bytes.
pub fn intel_hex(min_size: usize) -> Vec<u8> {
    let mut out = String::new();
    let mut addr: u16 = 0;
    while out.len() < min_size {
        let data: Vec<u8> = (0..16).map(|i| (addr as u8).wrapping_add(i)).collect();
        let mut rec = vec![16u8, (addr >> 8) as u8, addr as u8, 0];
        rec.extend(&data);
        let sum = rec.iter().fold(0u8, |s, b| s.wrapping_add(*b));
        rec.push(0u8.wrapping_sub(sum));
        out.push(':');
        out.push_str(&hex::encode_upper(&rec));
        out.push_str("\r\n");
        addr = addr.wrapping_add(16);
    }
    out.push_str(":00000001FF\r\n");
    out.into_bytes()
}
