//! Prometheus `/metrics` of `ota up`, on `metrics_bind`: a listener of its own, never the
//! device HTTP port (it faces the internet) nor the API port. The series are recorded through
//! the `metrics` facade where events happen (`ota_domain::metrics` names them); this module
//! installs the process's recorder once and serves its text rendering.

use std::sync::OnceLock;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use ota_domain::Db;
use ota_domain::metrics as names;

/// Gauges nobody sets for this long disappear (rules that ended; see `ota_rule_*`).
const GAUGE_IDLE: Duration = Duration::from_secs(120);

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use; the facade's global recorder can
/// be set once only, so every server of the process shares it (counters are process-wide).
pub fn handle() -> anyhow::Result<PrometheusHandle> {
    HANDLE.get_or_init(install).clone().map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))
}

fn install() -> Result<PrometheusHandle, String> {
    let mut builder = PrometheusBuilder::new().idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE));
    for name in names::HISTOGRAMS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), names::LATENCY_BUCKETS)
            .map_err(|e| e.to_string())?;
    }
    let handle = builder.install_recorder().map_err(|e| e.to_string())?;
    // Without the exporter's own listener, upkeep (histogram draining, idle gauges) is ours.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(handle)
}

/// Serves `GET /metrics` on `listener` (one worker); anything else is 404. The pool gauges are
/// read at each scrape.
pub fn serve(listener: std::net::TcpListener, db: Db) -> anyhow::Result<actix_web::dev::Server> {
    let handle = web::Data::new(handle()?);
    let db = web::Data::new(db);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(handle.clone())
            .app_data(db.clone())
            .route("/metrics", web::get().to(render))
            .default_service(web::to(|| async { HttpResponse::NotFound().body("not found; try GET /metrics\n") }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

async fn render(handle: web::Data<PrometheusHandle>, db: web::Data<Db>) -> HttpResponse {
    names::record_pool(&db);
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(handle.render())
}
