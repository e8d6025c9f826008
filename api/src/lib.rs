//! The management REST API: headless, JSON under `/api/v1`, documented by OpenAPI generated
//! from the routes themselves, for third-party frontends and CI scripts.
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod audit;
pub mod auth;
pub mod body;
pub mod contract;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod observe;
pub mod routes;
pub mod upload;

use std::net::{IpAddr, TcpListener};

use actix_cors::Cors;
use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};
use ota_domain::Domain;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_actix_web::{AppExt, scope};
use utoipa_swagger_ui::SwaggerUi;

pub use auth::JwtKeys;

/// What the API needs besides the domain.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Origins allowed to call the API from a browser; `*` allows any; empty allows none.
    pub cors_allowed_origins: Vec<String>,
    /// Largest JSON body accepted, in bytes.
    pub max_json_bytes: usize,
    /// Worker threads (0 = one per core).
    pub workers: usize,
    /// Proxies whose `X-Forwarded-For` names the client address (login throttle); empty: the
    /// peer address is the client address.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            cors_allowed_origins: Vec::new(),
            max_json_bytes: 64 * 1024,
            workers: 0,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Shared by every request.
pub struct AppState {
    pub domain: Domain,
    pub jwt: JwtKeys,
    pub trusted_proxies: Vec<IpAddr>,
    /// Where the audit middleware sends its entries.
    pub audit: audit::AuditSink,
    /// Rule event streams open per tenant (see `routes::events`).
    pub streams: std::sync::Arc<routes::events::StreamSlots>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "GAgent OTA server management API",
        description = "Self-hosted firmware rollout for Gizwits GAgent devices. Errors are \
            `{\"code\", \"message\", \"details\"}` with the stable codes of proto-docs/errors.md.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    components(schemas(
        ota_wire::ErrorBody,
        ota_wire::ErrorCode,
        ota_wire::rules::RuleDeviceFilter,
        ota_wire::dto::AdoptionEventKind,
        ota_wire::dto::FirmwareType,
        ota_wire::dto::PushMethod,
    )),
    tags(
        (name = "auth", description = "Log in and manage your own credentials"),
        (name = "users", description = "Users of your tenant (admins)"),
        (name = "tokens", description = "API tokens for scripts"),
        (name = "products", description = "Products"),
        (name = "firmware", description = "The firmware registry"),
        (name = "verification", description = "Verify firmware on one test device before any fleet push"),
        (name = "devices", description = "The device registry"),
        (name = "rules", description = "Push rules: targets, preview, start and stop, results"),
        (name = "adoption", description = "Take over devices provisioned by the hosted cloud"),
        (name = "security", description = "Device-side abuse: re-registration policy, wrong passcodes, unknown dids"),
        (name = "audit", description = "The audit log of operator actions (admins)"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A login JWT from /api/v1/auth/login, or an API token (`ota_…`). An operation's \
                         requirement names what the credentials need: a scope (`read`, `write`, \
                         `push`), `admin` (a tenant admin with a login session or an `admin` token), \
                         `installation_admin` (an admin of the installation's first tenant), or \
                         `session` (a login session, not an API token); none: any valid credentials.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Registers every route on a utoipa-aware app and returns the app and the OpenAPI document
/// collected from those same registrations, so the document cannot drift from what is mounted.
macro_rules! app_with_routes {
    ($app:expr) => {{
        use routes::*;
        $app.wrap(actix_web::middleware::from_fn(auth::resolve_credentials))
            .wrap(actix_web::middleware::from_fn(audit::record))
            .into_utoipa_app()
            .openapi(ApiDoc::openapi())
            .service(health::healthz)
            .service(health::readyz)
            .service(
                scope::scope("/api/v1")
                    .service(account::login)
                    .service(account::whoami)
                    .service(account::change_password)
                    .service(account::create_user)
                    .service(account::list_users)
                    .service(account::update_user)
                    .service(account::create_token)
                    .service(account::list_tokens)
                    .service(account::revoke_token)
                    .service(products::create_product)
                    .service(products::list_products)
                    .service(products::get_product)
                    .service(products::update_product)
                    .service(products::delete_product)
                    .service(firmware::create_firmware)
                    .service(firmware::list_firmware)
                    .service(firmware::get_firmware)
                    .service(firmware::update_firmware)
                    .service(firmware::replace_firmware_file)
                    .service(firmware::delete_firmware)
                    .service(firmware::download_firmware)
                    .service(verification::start_verification)
                    .service(verification::get_verification)
                    .service(verification::confirm_verification)
                    .service(verification::cancel_verification)
                    .service(devices::list_devices)
                    .service(devices::version_distribution)
                    .service(devices::import_devices)
                    .service(devices::get_device)
                    .service(devices::update_device)
                    .service(devices::delete_device)
                    .service(rules::create_rule)
                    .service(rules::list_rules)
                    .service(rules::preview_draft)
                    .service(rules::old_versions)
                    .service(rules::get_rule)
                    .service(rules::update_rule)
                    .service(rules::delete_rule)
                    .service(rules::preview_rule)
                    .service(rules::start_rule)
                    .service(rules::stop_rule)
                    .service(rules::rule_devices)
                    .service(events::rule_events)
                    .service(rules::export_rule_devices)
                    .service(rules::rule_macs)
                    .service(rules::upload_mac_list)
                    .service(rules::get_mac_list)
                    .service(rules::mac_list_entries)
                    .service(rollout::pause_rule)
                    .service(rollout::resume_rule)
                    .service(rollout::cancel_rule)
                    .service(rollout::advance_rule)
                    .service(rollout::exclude_devices)
                    .service(rollout::rule_preflight)
                    .service(rollout::list_all_rules)
                    .service(rollout::region_zones)
                    .service(rollout::set_region_zones)
                    .service(rollout::set_device_time_zone)
                    .service(devices::reset_passcode)
                    .service(adoption::get_adoption)
                    .service(adoption::set_adoption)
                    .service(adoption::list_adoption_events)
                    .service(security::get_registration_policy)
                    .service(security::set_registration_policy)
                    .service(security::device_security)
                    .service(security::list_unknown_devices)
                    .service(audit_log::list_audit)
                    .service(audit_log::export_audit),
            )
            .split_for_parts()
    }};
}

/// The OpenAPI document the server serves at `/api-docs/openapi.json`: the routes' own
/// annotations, completed with the answers every route of its shape can give
/// ([`contract::complete`]).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_app, api) = app_with_routes!(App::new());
    contract::complete(api)
}

fn cors(origins: &[String]) -> Cors {
    let base = Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
        .allowed_headers([
            actix_web::http::header::AUTHORIZATION,
            actix_web::http::header::CONTENT_TYPE,
            actix_web::http::header::IF_NONE_MATCH,
            actix_web::http::header::HeaderName::from_static("idempotency-key"),
            observe::REQUEST_ID,
        ])
        .expose_headers([
            actix_web::http::header::ETAG,
            actix_web::http::header::CONTENT_DISPOSITION,
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderName::from_static("idempotency-replayed"),
            observe::REQUEST_ID,
        ])
        .max_age(3600);
    if origins.iter().any(|o| o == "*") {
        return base.allow_any_origin();
    }
    origins.iter().fold(base, |cors, origin| cors.allowed_origin(origin))
}

/// Starts the API on an already bound listener (bind port 0 in tests and read it back).
pub fn serve(listener: TcpListener, domain: Domain, jwt: JwtKeys, settings: ApiSettings) -> std::io::Result<Server> {
    tokio::spawn(maintenance(domain.clone()));
    let document = openapi();
    let routes = web::Data::new(contract::RouteTable::from_openapi(&document));
    let operations = web::Data::new(audit::Operations::from_openapi(&document));
    let audit = audit::AuditSink::start(domain.clone());
    let state = web::Data::new(AppState {
        domain,
        jwt,
        trusted_proxies: settings.trusted_proxies.clone(),
        audit,
        streams: Default::default(),
    });
    let settings_for_app = settings.clone();
    let mut server = HttpServer::new(move || {
        let (app, api) = app_with_routes!(
            App::new()
                .app_data(state.clone())
                .app_data(routes.clone())
                .app_data(operations.clone())
                .app_data(
                    web::JsonConfig::default().limit(settings_for_app.max_json_bytes).error_handler(error::json_error)
                )
                .app_data(web::PathConfig::default().error_handler(error::path_error))
                .wrap(cors(&settings_for_app.cors_allowed_origins))
                .wrap(
                    actix_web::middleware::Logger::new("%a \"%r\" %s %b %Dms request_id=%{x-request-id}i")
                        .log_target("ota_api::access")
                )
        );
        app.service(SwaggerUi::new("/docs/{_:.*}").url("/api-docs/openapi.json", contract::complete(api)))
            .route(
                "/docs",
                web::get().to(|| async { HttpResponse::Found().insert_header(("Location", "/docs/")).finish() }),
            )
            .default_service(web::to(contract::no_route))
            .wrap(actix_web::middleware::from_fn(observe::request_context))
    })
    .listen(listener)?;
    if settings.workers > 0 {
        server = server.workers(settings.workers);
    }
    Ok(server.disable_signals().run())
}

/// The maintenance task of the API, once a minute (time-driven changes, so not inside a
/// request): login failure counters without a failure for 15 minutes, held `target_fid`
/// reports past their time, unknown-did refusals not seen for 30 days and idempotency keys
/// older than a day are deleted.
async fn maintenance(domain: Domain) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        ticks.tick().await;
        if let Err(e) = domain.forget_login_failures().await {
            tracing::warn!(error = %e, "could not forget old login failures");
        }
        if let Err(e) = domain.forget_old_device_records().await {
            tracing::warn!(error = %e, "could not forget old device records");
        }
        if let Err(e) = domain.forget_idempotency_keys().await {
            tracing::warn!(error = %e, "could not forget old idempotency keys");
        }
    }
}
