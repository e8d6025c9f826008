//! JSON bodies and query strings whose errors name the field.
//!
//! actix's own `Json` and `Query` report serde's text (`missing field `name` at line 1 column
//! 2`); these extractors deserialize with the path of the failing field, so the answer is a
//! stable code with `details.field` (`missing_field`, `invalid_field`, `invalid_query`), as
//! `proto-docs/errors.md` promises. The body limit and content-type check stay actix's
//! (`JsonConfig`, mapped by [`crate::error::json_error`]).

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::future::LocalBoxFuture;
use ota_domain::DomainError;
use ota_wire::ErrorCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body of type `T`.
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The dotted path of the field at fault (`period.end`, `regions[2]`); `$` for the root.
fn field_path(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." { String::new() } else { text }
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() { child.to_owned() } else { format!("{parent}.{child}") }
}

/// The name serde quotes first in its message (`missing field `x``, `unknown field `x``).
fn quoted<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// serde says `missing field `x``, `unknown field `x``, `invalid type: …`, `unknown variant
/// …`; keep the code stable and name the field. A tagged body's unknown tag is its `tag`.
fn classify(err: &serde_path_to_error::Error<serde_json::Error>, tag: Option<&str>) -> ApiError {
    let parent = field_path(err.path());
    let inner = err.inner().to_string();
    if let Some(name) = quoted(&inner, "missing field `") {
        let field = join(&parent, name);
        return ApiError(DomainError::field(ErrorCode::MissingField, &field, format!("`{field}` is required")));
    }
    let field = match (quoted(&inner, "unknown field `"), tag) {
        // The path already ends at the unknown field; for a tagged body it stops above it.
        (Some(name), _) if parent == name || parent.ends_with(&format!(".{name}")) => parent,
        (Some(name), _) => join(&parent, name),
        (None, Some(tag)) if parent.is_empty() && inner.starts_with("unknown variant") => tag.to_owned(),
        _ if parent.is_empty() => "body".to_owned(),
        _ => parent,
    };
    ApiError(DomainError::field(ErrorCode::InvalidField, &field, format!("`{field}`: {inner}")))
}

/// JSON Schema counts `960.0` as an integer; serde does not. Integral floats that fit are
/// turned into integers before the typed deserialization, so every schema-valid integer is read.
fn integral_floats(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9.007_199_254_740_992e15
            {
                *value = Value::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats),
        Value::Object(fields) => fields.values_mut().for_each(integral_floats),
        _ => {}
    }
}

/// A request body type: always a JSON object, maybe tagged by one field.
pub trait JsonBody: DeserializeOwned + 'static {
    /// The field that names the variant of a tagged body (`policy`).
    const TAG: Option<&'static str> = None;
}

impl<T: JsonBody> FromRequest for Json<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let value = web::Json::<serde_json::Value>::from_request(req, payload);
        Box::pin(async move {
            let mut value = value.await?.into_inner();
            // serde would also read a struct from an array of its fields; the schema says object.
            if !value.is_object() {
                return Err(ApiError::new(ErrorCode::InvalidJson, "the body must be a JSON object").into());
            }
            integral_floats(&mut value);
            serde_path_to_error::deserialize(value).map(Json).map_err(|e| classify(&e, T::TAG).into())
        })
    }
}

macro_rules! json_bodies {
    ($($t:ty),* $(,)?) => { $(impl JsonBody for $t {})* };
}

json_bodies!(
    ota_wire::dto::LoginRequest,
    ota_wire::dto::ChangePasswordRequest,
    ota_wire::dto::CreateUserRequest,
    ota_wire::dto::UpdateUserRequest,
    ota_wire::dto::CreateTokenRequest,
    ota_wire::dto::CreateProductRequest,
    ota_wire::dto::UpdateProductRequest,
    ota_wire::dto::UpdateFirmwareRequest,
    ota_wire::dto::StartVerificationRequest,
    ota_wire::dto::ConfirmVerificationRequest,
    ota_wire::dto::UpdateDeviceRequest,
    ota_wire::rules::RuleBody,
    ota_wire::rules::UpdateRuleRequest,
    ota_wire::rules::StartRuleRequest,
    ota_wire::rollout::ExcludeRequest,
    ota_wire::rollout::SetRegionZones,
    ota_wire::rollout::DeviceTimeZone,
);

impl JsonBody for ota_wire::dto::SetAdoptionRequest {
    const TAG: Option<&'static str> = Some("policy");
}

impl JsonBody for ota_wire::dto::SetRegistrationPolicy {
    const TAG: Option<&'static str> = Some("policy");
}

/// A query string of type `T`.
pub struct Query<T>(pub T);

impl<T> Query<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let pairs = form_urlencoded::parse(req.query_string().as_bytes());
        let de = serde_urlencoded::Deserializer::new(pairs);
        std::future::ready(serde_path_to_error::deserialize(de).map(Query).map_err(|e| {
            let field = field_path(e.path());
            let inner = e.inner().to_string();
            let field = match inner.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
                Some(name) => join(&field, name),
                None if field.is_empty() => "query".to_owned(),
                None => field,
            };
            ApiError(DomainError::field(ErrorCode::InvalidQuery, &field, format!("`{field}`: {inner}"))).into()
        }))
    }
}
