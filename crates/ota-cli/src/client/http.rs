//! The management API over HTTP, typed with the API's own wire types (`ota_wire`).

use reqwest::{Method, RequestBuilder, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{Class, CliError, CliResult};

/// A server URL and the credentials to call it with.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

/// A success answer: whether it was a replay of an earlier request with the same
/// `Idempotency-Key`, and the body.
pub struct Answer<T> {
    pub replayed: bool,
    pub body: T,
}

impl Api {
    pub fn new(base: &str, token: &str) -> CliResult<Api> {
        let base = base.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(CliError::new(
                Class::Usage,
                format!("the server URL `{base}` must start with http:// or https://"),
            ));
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("ota/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| CliError::new(Class::Local, format!("cannot build an HTTP client: {e}")))?;
        Ok(Api { base: base.to_owned(), token: token.to_owned(), client })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `/api/v1{path}` with the credentials.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.client.request(method, format!("{}/api/v1{path}", self.base));
        if self.token.is_empty() { r } else { r.bearer_auth(&self.token) }
    }

    /// Sends and reads a JSON answer; an error answer becomes its [`CliError`].
    pub async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> CliResult<Answer<T>> {
        let response = self.send_raw(request).await?;
        let replayed = response.headers().get("idempotency-replayed").is_some_and(|v| v == "true");
        let bytes = response.bytes().await.map_err(network)?;
        let body = serde_json::from_slice(&bytes).map_err(|e| {
            CliError::new(Class::Server, format!("the server's answer is not what the API documents: {e}"))
        })?;
        Ok(Answer { replayed, body })
    }

    /// Sends; a non-success answer becomes its [`CliError`], a success is returned unread.
    pub async fn send_raw(&self, request: RequestBuilder) -> CliResult<Response> {
        let response = request.send().await.map_err(network)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(network)?;
        Err(match serde_json::from_slice::<ota_wire::ErrorBody>(&bytes) {
            Ok(body) => CliError::api(status, body),
            Err(_) => CliError {
                class: Class::of_status(status),
                status: Some(status),
                body: None,
                message: format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes).chars().take(200).collect::<String>()
                ),
            },
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        Ok(self.send(self.request(Method::GET, path)).await?.body)
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> CliResult<T> {
        Ok(self.send(self.request(Method::POST, path).json(body)).await?.body)
    }

    /// A POST without a body (rollout actions).
    pub async fn post_empty<T: DeserializeOwned>(&self, path: &str) -> CliResult<T> {
        Ok(self.send(self.request(Method::POST, path)).await?.body)
    }

    pub async fn delete(&self, path: &str) -> CliResult<()> {
        self.send_raw(self.request(Method::DELETE, path)).await.map(drop)
    }
}

fn network(e: reqwest::Error) -> CliError {
    let what = if e.is_connect() {
        "cannot connect to the server"
    } else if e.is_timeout() {
        "the server did not answer in time"
    } else {
        "the request failed"
    };
    let mut message = format!("{what}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    CliError::new(Class::Server, message)
}
