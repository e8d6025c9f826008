//! Products.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use ota_domain::PageRequest;
use ota_domain::access::{Read, Write};
use ota_wire::ErrorBody;
use ota_wire::dto::*;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::extract::{Json, Query};

/// Create a product. `product_key` and `product_secret` are generated unless given.
#[utoipa::path(
    tag = "products",
    request_body = CreateProductRequest,
    responses((status = 201, body = ProductView), (status = 400, body = ErrorBody), (status = 409, description = "`product_key_taken`", body = ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[post("/products")]
pub async fn create_product(
    st: web::Data<AppState>,
    who: Auth<Write>,
    body: Json<CreateProductRequest>,
) -> Result<HttpResponse, ApiError> {
    let product =
        st.domain.create_product(&who, &body.name, body.product_key.as_deref(), body.product_secret.as_deref()).await?;
    Ok(HttpResponse::Created().json(product))
}

/// List your tenant's products, newest first.
#[utoipa::path(tag = "products", params(PageQuery), responses((status = 200, body = Page<ProductView>)), security(("bearer" = ["read"])))]
#[get("/products")]
pub async fn list_products(
    st: web::Data<AppState>,
    who: Auth<Read>,
    q: Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = PageRequest::new(q.page, q.per_page)?;
    Ok(HttpResponse::Ok().json(st.domain.list_products(&who, page).await?))
}

/// Get one product.
#[utoipa::path(
    tag = "products",
    params(("product_key" = String, Path)),
    responses((status = 200, body = ProductView), (status = 404, body = ErrorBody)),
    security(("bearer" = ["read"]))
)]
#[get("/products/{product_key}")]
pub async fn get_product(
    st: web::Data<AppState>,
    who: Auth<Read>,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.get_product(&who, &key).await?))
}

/// Rename a product.
#[utoipa::path(
    tag = "products",
    params(("product_key" = String, Path)),
    request_body = UpdateProductRequest,
    responses((status = 200, body = ProductView), (status = 404, body = ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[patch("/products/{product_key}")]
pub async fn update_product(
    st: web::Data<AppState>,
    who: Auth<Write>,
    key: web::Path<String>,
    body: Json<UpdateProductRequest>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(st.domain.update_product(&who, &key, body.name.as_deref()).await?))
}

/// Delete a product that has no firmware.
#[utoipa::path(
    tag = "products",
    params(("product_key" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "`product_not_empty`", body = ErrorBody)),
    security(("bearer" = ["write"]))
)]
#[delete("/products/{product_key}")]
pub async fn delete_product(
    st: web::Data<AppState>,
    who: Auth<Write>,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    st.domain.delete_product(&who, &key).await?;
    Ok(HttpResponse::NoContent().finish())
}
