//! The routes: the page and its assets, the JSON it reads, and `/metrics`.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use cohort_coordinator::service::history::{HistoryPage, PauseSummary};
use cohort_coordinator::service::metrics::CONTENT_TYPE as OPENMETRICS;
use serde::{Deserialize, Serialize};

use super::store_view::StoreView;
use super::{Dashboard, Settings};
use crate::cli::status::Status;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");
const ICON: &str = include_str!("assets/favicon.svg");

/// At most this many object ids are listed for one node.
const OBJECTS_LISTED: usize = 1_000;

pub(super) fn routes(dashboard: Dashboard) -> Router {
    Router::new()
        .route("/", get(|| asset("text/html; charset=utf-8", INDEX)))
        .route(
            "/app.js",
            get(|| asset("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE)),
        )
        .route("/favicon.svg", get(|| asset("image/svg+xml", ICON)))
        .route("/api/status", get(status))
        .route("/api/history", get(history))
        .route("/api/checkpoints", get(checkpoints))
        .route("/api/nodes/{name}", get(node))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(dashboard)
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small, and they change with the binary: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "not found: the dashboard is at /, its data under /api/, metrics at /metrics\n",
    )
        .into_response()
}

async fn metrics(State(d): State<Dashboard>) -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], d.metrics.render()).into_response()
}

/// `/api/status`.
#[derive(Debug, Serialize)]
struct StatusPage {
    /// This coordinator's clock, Unix ms: the page shows ages against it.
    now_ms: u64,
    /// The coordinator serving this page.
    this: This,
    /// What `cohort status --json` prints.
    cohort: Status,
    /// The store's health, as last read.
    store: StoreHealth,
    /// This coordinator's counters (the `/metrics` values).
    counters: Counters,
}

#[derive(Debug, Serialize)]
struct This {
    holder: Option<String>,
    address: Option<String>,
    /// `leader`, `standby`, or `starting` (the leadership driver is not up yet).
    role: &'static str,
    /// The epoch it leads under, or the newest it saw while standing by.
    epoch: Option<u64>,
    dashboard: Option<String>,
    settings: Settings,
}

#[derive(Debug, Serialize)]
struct StoreHealth {
    url: String,
    reachable: Option<bool>,
    error: Option<String>,
    checked_at_ms: Option<u64>,
    ok_at_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Counters {
    committed: u64,
    aborted: u64,
    failed: u64,
    recoveries: u64,
    leader_epoch: u64,
    pauses: u64,
    duration_sum_ms: u64,
    size_sum_bytes: u64,
}

/// The status as `cohort status` would assemble it: this coordinator's report, the leader's
/// (its own, or the one it heard when announcing itself), and the store.
async fn assemble(
    d: &Dashboard,
) -> (
    Status,
    Option<cohort_coordinator::service::StateTable>,
    StoreView,
    This,
) {
    let own = d.responder.status();
    let leader = match &own {
        Some(r) if r.leading => Some(r.clone()),
        _ => d.responder.leader_status(),
    };
    let (view, facts) = d.store.current().await;
    let reports = match &own {
        Some(own) => Ok((own, leader.as_ref())),
        None => Err("the coordinator is starting".to_owned()),
    };
    let (status, table) = Status::assemble(reports, facts.as_ref());
    let this = This {
        holder: own.as_ref().map(|r| r.holder.clone()),
        address: own.as_ref().map(|r| r.address.clone()),
        role: match &own {
            None => "starting",
            Some(r) if r.leading => "leader",
            Some(_) => "standby",
        },
        epoch: own.as_ref().and_then(|r| r.epoch),
        dashboard: own.as_ref().and_then(|r| r.dashboard.clone()),
        settings: d.settings,
    };
    (status, table, view, this)
}

async fn status(State(d): State<Dashboard>) -> Json<StatusPage> {
    let (cohort, _, view, this) = assemble(&d).await;
    let m = d.metrics.snapshot();
    Json(StatusPage {
        now_ms: d.clock.wall_ms(),
        this,
        cohort,
        store: StoreHealth {
            url: view.url,
            reachable: view.reachable,
            error: view.error,
            checked_at_ms: view.checked_at_ms,
            ok_at_ms: view.ok_at_ms,
        },
        counters: Counters {
            committed: m.committed,
            aborted: m.aborted,
            failed: m.failed,
            recoveries: m.recoveries,
            leader_epoch: m.leader_epoch,
            pauses: m.pauses,
            duration_sum_ms: u64::try_from(m.duration_sum.as_millis()).unwrap_or(u64::MAX),
            size_sum_bytes: m.size_sum_bytes,
        },
    })
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    /// Only what was recorded after this sequence number; 0 or absent: everything kept.
    #[serde(default)]
    after: u64,
}

/// `/api/history`.
#[derive(Debug, Serialize)]
struct HistoryAnswer {
    #[serde(flatten)]
    page: HistoryPage,
    /// Per node, its pauses over the committed attempts kept.
    pauses: BTreeMap<String, PauseSummary>,
}

async fn history(State(d): State<Dashboard>, Query(q): Query<HistoryQuery>) -> Json<HistoryAnswer> {
    let history = d.metrics.history();
    Json(HistoryAnswer {
        page: history.since(q.after),
        pauses: history.pauses(),
    })
}

async fn checkpoints(State(d): State<Dashboard>) -> Json<StoreView> {
    Json(d.store.current().await.0)
}

/// `/api/nodes/{name}`.
#[derive(Debug, Serialize)]
struct NodeObjects {
    node: String,
    /// Objects placed on it, in id order, at most [`OBJECTS_LISTED`].
    objects: Vec<String>,
    /// How many there are in all.
    total: usize,
}

async fn node(State(d): State<Dashboard>, Path(name): Path<String>) -> Response {
    let (_, table, _, _) = assemble(&d).await;
    let Some(table) = table.filter(|t| t.nodes.contains_key(&name)) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no node {name:?} is known\n"),
        )
            .into_response();
    };
    let placed = table.placement.iter().filter(|(_, n)| **n == name);
    let total = placed.clone().count();
    Json(NodeObjects {
        objects: placed
            .take(OBJECTS_LISTED)
            .map(|(id, _)| id.to_string())
            .collect(),
        node: name,
        total,
    })
    .into_response()
}
