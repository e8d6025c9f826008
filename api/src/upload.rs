//! Reading multipart firmware forms with our own limits.
//!
//! The size limit is enforced twice: a declared `Content-Length` over it is refused before a
//! byte of the body is read, and a body without one (chunked) is cut off as soon as the
//! running count passes it. The file streams into a staging file; nothing is buffered whole.

use actix_multipart::Multipart;
use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use ota_domain::DomainError;
use ota_domain::firmware::FirmwareUpload;
use ota_domain::store::{StageError, StagedFile, StagingWriter};
use ota_wire::ErrorCode;

use crate::AppState;
use crate::error::ApiError;

/// Room for the form's boundaries, headers and text fields on top of the file itself.
const FORM_OVERHEAD: u64 = 64 * 1024;
/// The longest text field we read.
const MAX_TEXT_FIELD: usize = 1024;

fn too_large(limit: u64) -> ApiError {
    ApiError(DomainError::with_details(
        ErrorCode::FirmwareTooLarge,
        format!("firmware files may be at most {limit} bytes"),
        serde_json::json!({ "field": "file", "limit_bytes": limit }),
    ))
}

fn malformed(e: actix_multipart::MultipartError) -> ApiError {
    bad_form(format!("malformed multipart body: {e}"))
}

fn bad_form(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidMultipart, message)
}

/// Refuses early what cannot be a valid upload: a wrong content type or a declared size over the limit.
fn precheck(req: &HttpRequest, limit: u64) -> Result<(), ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "send the firmware as multipart/form-data"));
    }
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit + FORM_OVERHEAD) {
        return Err(too_large(limit));
    }
    Ok(())
}

/// Reads a firmware form: text fields and one `file` part. Unknown fields are skipped.
pub async fn read_form(st: &AppState, req: &HttpRequest, payload: web::Payload) -> Result<FirmwareUpload, ApiError> {
    let limit = st.domain.settings.max_firmware_bytes;
    precheck(req, limit)?;
    let mut form = Multipart::new(req.headers(), payload);
    let mut upload = FirmwareUpload::default();
    let mut total: u64 = 0;
    while let Some(item) = form.next().await {
        let mut field = item.map_err(malformed)?;
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            if upload.file.is_some() {
                return Err(bad_form("send exactly one `file` part"));
            }
            let file_name = field.content_disposition().and_then(|cd| cd.get_filename()).unwrap_or_default().to_owned();
            upload.file = Some(stage(st, &mut field, &file_name, limit, &mut total).await?);
            continue;
        }
        let mut text = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(malformed)?;
            total += chunk.len() as u64;
            if total > limit + FORM_OVERHEAD {
                return Err(too_large(limit));
            }
            if text.len() + chunk.len() > MAX_TEXT_FIELD {
                return Err(ApiError(DomainError::invalid(
                    &name,
                    format!("`{name}` is longer than {MAX_TEXT_FIELD} bytes"),
                )));
            }
            text.extend_from_slice(&chunk);
        }
        let slot = match name.as_str() {
            "name" => &mut upload.name,
            "type" => &mut upload.fw_type,
            "push_method" => &mut upload.push_method,
            "hard_version" => &mut upload.hard_version,
            "soft_version" => &mut upload.soft_version,
            _ => continue,
        };
        let value = String::from_utf8(text)
            .map_err(|_| ApiError(DomainError::invalid(&name, format!("`{name}` is not UTF-8 text"))))?;
        *slot = Some(value);
    }
    Ok(upload)
}

/// Reads a form that carries only a replacement `file`.
pub async fn read_file_only(st: &AppState, req: &HttpRequest, payload: web::Payload) -> Result<StagedFile, ApiError> {
    read_form(st, req, payload).await?.file.ok_or_else(|| ApiError(DomainError::missing("file")))
}

async fn stage(
    st: &AppState,
    field: &mut actix_multipart::Field,
    file_name: &str,
    limit: u64,
    total: &mut u64,
) -> Result<StagedFile, ApiError> {
    let mut writer = StagingWriter::create(&st.domain.settings.staging_dir, file_name, limit)
        .await
        .map_err(|e| ApiError(e.into()))?;
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(malformed)?;
        *total += chunk.len() as u64;
        writer.write(&chunk).await.map_err(|e| match e {
            StageError::TooLarge { limit } => too_large(limit),
            StageError::Io(e) => ApiError(e.into()),
        })?;
    }
    writer.finish().await.map_err(|e| ApiError(e.into()))
}
