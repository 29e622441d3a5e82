//! Server-wide admin endpoints (Synapse admin API): event reports, federation
//! destinations and background updates.
//!
//! - §"Event Reports API": `GET /_synapse/admin/v1/event_reports` ("returns a
//!   list of reported events", `from`, `limit`, `dir` defaulting to `b`,
//!   `user_id`, `room_id`; `next_token`, `total`), `GET` and `DELETE`
//!   `/_synapse/admin/v1/event_reports/<report_id>` (the details add
//!   `event_json`).
//! - §"Federation API": `GET /_synapse/admin/v1/federation/destinations`
//!   ("retrieve information about all remote homeservers that the local server
//!   has ever tried to contact", with `from`, `limit`, `order_by`, `dir`,
//!   `destination`), `…/destinations/<destination>`, `…/<destination>/rooms`
//!   and `POST …/<destination>/reset_connection` ("resets the connection
//!   timeout"). Here the destinations known are those with a queue, a stored
//!   backoff, or a room shared with this server; Myelin keeps no per-destination
//!   stream position, so `last_successful_stream_ordering` is `null`.
//! - §"Background Updates API": Myelin runs no background database updates,
//!   so the status lists none; pausing is remembered and reported, and the two
//!   jobs Synapse can be asked to start are accepted (there is nothing to redo).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::atomic::Ordering,
};

use http::StatusCode;
use myelin_engine::{
    federation::backoff::Backoff,
    reports::{Numbered, ReportFilter},
};
use ruma::{EventId, RoomId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{audit, bad_request, query_backwards, query_choice, query_count, require_admin};
use crate::{
    auth::query_param,
    error::ApiError,
    http_util::{Empty, ok_empty, ok_json, parse_json},
    router::{Ctx, HandlerFuture, Req},
};

/// Most items one page of these lists holds, whatever `limit` asks.
const MAX_PAGE: usize = 1000;

/// The report id path parameter: a non-negative integer.
fn report_id(req: &Req) -> Result<u64, ApiError> {
    req.param("report_id")?.parse::<u64>().map_err(|_| {
        ApiError::invalid_param("The report_id parameter must be a string representing a positive integer.")
    })
}

/// One report as Synapse's list shows it.
#[derive(Serialize)]
struct ReportInfo {
    id: u64,
    received_ts: u64,
    room_id: String,
    name: Option<String>,
    canonical_alias: Option<String>,
    event_id: Option<String>,
    user_id: String,
    sender: Option<String>,
    reason: Option<String>,
    score: Option<i64>,
}

/// The answer of `GET v1/event_reports`: a page of reports.
#[derive(Serialize)]
struct ReportPage {
    event_reports: Vec<ReportInfo>,
    total: usize,
    /// Where the next page starts, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<usize>,
}

/// The answer of `GET v1/event_reports/{report_id}`: the report and the event reported.
#[derive(Serialize)]
struct ReportDetails {
    #[serde(flatten)]
    report: ReportInfo,
    /// The event as stored (`null` if it is not held).
    event_json: Option<Value>,
}

fn report_info(cx: &Ctx, n: &Numbered) -> ReportInfo {
    let r = &n.report;
    let room = RoomId::parse(r.room_id.as_str()).ok();
    let state_text = |kind: &str, field: &str| -> Option<String> {
        let room = room.as_ref()?;
        let pdu = cx.engine.rooms.state_event(room, kind, "").ok()??;
        pdu.content_value().get(field)?.as_str().map(str::to_owned)
    };
    let sender = r
        .event_id
        .as_deref()
        .and_then(|e| EventId::parse(e).ok())
        .and_then(|e| cx.engine.rooms.pdu(&e).ok().flatten())
        .map(|p| p.sender.to_string());
    ReportInfo {
        id: n.id,
        received_ts: r.received_ms,
        room_id: r.room_id.clone(),
        name: state_text("m.room.name", "name"),
        canonical_alias: state_text("m.room.canonical_alias", "alias"),
        event_id: r.event_id.clone(),
        user_id: r.reporter.clone(),
        sender,
        reason: r.reason.clone(),
        score: r.score,
    }
}

/// GET /_synapse/admin/v1/event_reports
pub fn event_reports(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let from = query_count(&req, "from", 0)?;
        let limit = query_count(&req, "limit", 100)?.min(MAX_PAGE);
        // Newest first unless asked otherwise, as Synapse lists them.
        let backwards = query_choice(&req, "dir", "b", &["b", "f"])? == "b";
        let filter = ReportFilter {
            events_only: true,
            reporter: query_param(&req, "user_id"),
            room_id: query_param(&req, "room_id"),
        };
        let (page, total) = cx.engine.reports.page(&filter, from, limit, backwards)?;
        let reports: Vec<ReportInfo> = page.iter().map(|n| report_info(&cx, n)).collect();
        let next_token = if from + reports.len() < total { Some(from + reports.len()) } else { None };
        Ok(ok_json(&ReportPage { event_reports: reports, total, next_token }))
    })
}

/// GET /_synapse/admin/v1/event_reports/{report_id}
pub fn event_report(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let id = report_id(&req)?;
        let found = cx.engine.reports.get(id)?.filter(|n| n.report.event_id.is_some());
        let n = found.ok_or_else(|| ApiError::not_found("Event report not found"))?;
        let report = report_info(&cx, &n);
        let event = n
            .report
            .event_id
            .as_deref()
            .and_then(|e| EventId::parse(e).ok())
            .and_then(|e| cx.engine.rooms.pdu(&e).ok().flatten())
            .and_then(|p| serde_json::from_slice::<Value>(&p.to_bytes()).ok());
        Ok(ok_json(&ReportDetails { report, event_json: event }))
    })
}

/// DELETE /_synapse/admin/v1/event_reports/{report_id}
pub fn delete_event_report(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let id = report_id(&req)?;
        if cx.engine.reports.get(id)?.is_none_or(|n| n.report.event_id.is_none())
            || !cx.engine.reports.delete(id).await?
        {
            return Err(ApiError::not_found("Event report not found"));
        }
        audit(&me, "delete_event_report", &id.to_string());
        Ok(ok_empty())
    })
}

/// One destination as Synapse shows it.
#[derive(Serialize, Clone)]
struct DestinationInfo {
    destination: String,
    retry_last_ts: u64,
    retry_interval: u64,
    failure_ts: Option<u64>,
    last_successful_stream_ordering: Option<u64>,
}

fn destination_info(name: &str, backoff: Option<&Backoff>) -> DestinationInfo {
    DestinationInfo {
        destination: name.to_owned(),
        retry_last_ts: backoff.map_or(0, |b| b.retry_at_ms.saturating_sub(b.step_ms)),
        retry_interval: backoff.map_or(0, |b| b.step_ms),
        failure_ts: backoff.map(|b| b.failing_since_ms).filter(|t| *t != 0),
        last_successful_stream_ordering: None,
    }
}

/// The answer of `GET v1/federation/destinations`: a page of destinations.
#[derive(Serialize)]
struct DestinationPage {
    destinations: Vec<DestinationInfo>,
    total: usize,
    /// Where the next page starts (a string, as Synapse answers), if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

/// One room of `GET v1/federation/destinations/{destination}/rooms`.
#[derive(Serialize)]
struct DestinationRoom {
    room_id: String,
    /// Always `null`: Myelin keeps no per-room stream position for a destination.
    stream_ordering: Option<u64>,
}

/// The answer of `GET v1/federation/destinations/{destination}/rooms`: a page of rooms.
#[derive(Serialize)]
struct DestinationRoomPage {
    rooms: Vec<DestinationRoom>,
    total: usize,
    /// Where the next page starts (a string, as Synapse answers), if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

/// Most destinations listed (and backoffs read) at once.
const MAX_DESTINATIONS: usize = 100_000;

/// Every destination this server knows, with its stored backoff.
fn destinations(cx: &Ctx) -> Result<BTreeMap<String, Option<Backoff>>, ApiError> {
    let own = cx.engine.server_name.as_str();
    let mut out: BTreeMap<String, Option<Backoff>> = BTreeMap::new();
    for (name, backoff) in cx.engine.backoffs.list(MAX_DESTINATIONS)? {
        out.insert(name, Some(backoff));
    }
    for (_, name) in cx.engine.rooms.outbound_destinations()? {
        out.entry(name).or_default();
    }
    for room in cx.engine.rooms.all_rooms()? {
        if out.len() >= MAX_DESTINATIONS {
            break;
        }
        for server in cx.engine.rooms.joined_servers_now(&room)? {
            out.entry(server).or_default();
        }
    }
    out.remove(own);
    Ok(out)
}

/// The destination path parameter, known here (404 "Unknown destination" otherwise).
fn known_destination(cx: &Ctx, req: &Req) -> Result<(String, Option<Backoff>), ApiError> {
    let name = req.param("destination")?.to_owned();
    let unknown = || ApiError::not_found("Unknown destination");
    if name == cx.engine.server_name.as_str() || ruma::ServerName::parse(name.as_str()).is_err() {
        return Err(unknown());
    }
    if let Some(b) = cx.engine.backoffs.get(&name)? {
        return Ok((name, Some(b)));
    }
    destinations(cx)?.remove_entry(&name).ok_or_else(unknown)
}

/// The `order_by` values of the destination list.
const DESTINATION_ORDERS: &[&str] =
    &["destination", "retry_last_ts", "retry_interval", "failure_ts", "last_successful_stream_ordering"];

/// GET /_synapse/admin/v1/federation/destinations
pub fn list_destinations(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let from = query_count(&req, "from", 0)?;
        let limit = query_count(&req, "limit", 100)?.min(MAX_PAGE);
        let order = query_choice(&req, "order_by", "destination", DESTINATION_ORDERS)?;
        let backwards = query_backwards(&req)?;
        let filter = query_param(&req, "destination").map(|d| d.to_lowercase());
        let mut all: Vec<DestinationInfo> = destinations(&cx)?
            .iter()
            .filter(|(name, _)| filter.as_deref().is_none_or(|f| name.to_lowercase().contains(f)))
            .map(|(name, b)| destination_info(name, b.as_ref()))
            .collect();
        // Sorted by name already; a stable sort keeps that within equal keys.
        match order {
            "retry_last_ts" => all.sort_by_key(|d| d.retry_last_ts),
            "retry_interval" => all.sort_by_key(|d| d.retry_interval),
            "failure_ts" => all.sort_by_key(|d| d.failure_ts),
            _ => {}
        }
        if backwards {
            all.reverse();
        }
        let total = all.len();
        let page: Vec<DestinationInfo> = all.into_iter().skip(from).take(limit).collect();
        let next_token = if from + page.len() < total { Some((from + page.len()).to_string()) } else { None };
        Ok(ok_json(&DestinationPage { destinations: page, total, next_token }))
    })
}

/// GET /_synapse/admin/v1/federation/destinations/{destination}
pub fn destination(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let (name, backoff) = known_destination(&cx, &req)?;
        Ok(ok_json(&destination_info(&name, backoff.as_ref())))
    })
}

/// GET /_synapse/admin/v1/federation/destinations/{destination}/rooms
pub fn destination_rooms(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let (name, _) = known_destination(&cx, &req)?;
        let from = query_count(&req, "from", 0)?;
        let limit = query_count(&req, "limit", 100)?.min(MAX_PAGE);
        let backwards = query_backwards(&req)?;
        let mut rooms: BTreeSet<String> = BTreeSet::new();
        for room in cx.engine.rooms.all_rooms()? {
            if cx.engine.rooms.joined_servers_now(&room)?.contains(&name) {
                rooms.insert(room.to_string());
            }
        }
        let mut rooms: Vec<String> = rooms.into_iter().collect();
        if backwards {
            rooms.reverse();
        }
        let total = rooms.len();
        // Myelin keeps no per-room stream position for a destination.
        let page: Vec<DestinationRoom> = rooms
            .into_iter()
            .skip(from)
            .take(limit)
            .map(|room_id| DestinationRoom { room_id, stream_ordering: None })
            .collect();
        let next_token = if from + page.len() < total { Some((from + page.len()).to_string()) } else { None };
        Ok(ok_json(&DestinationRoomPage { rooms: page, total, next_token }))
    })
}

/// POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection
pub fn reset_connection(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let (name, backoff) = known_destination(&cx, &req)?;
        if backoff.is_none() {
            return Err(bad_request("The retry timing does not need to be reset for this destination."));
        }
        cx.engine.backoffs.clear(&name).await?;
        // A sender waiting out the backoff, or parked, tries again now.
        cx.engine.federation.mark_alive(&name);
        audit(&me, "reset_connection", &name);
        Ok(ok_empty())
    })
}

/// The answer of `GET v1/background_updates/status`.
#[derive(Serialize)]
struct BackgroundStatus {
    enabled: bool,
    /// Always `{}`: Myelin runs no background updates.
    current_updates: Empty,
}

/// The answer of `GET` and `POST v1/background_updates/enabled`.
#[derive(Serialize)]
struct BackgroundEnabled {
    enabled: bool,
}

/// GET /_synapse/admin/v1/background_updates/status
pub fn background_status(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let enabled = !cx.deletions.background_updates_paused.load(Ordering::Relaxed);
        Ok(ok_json(&BackgroundStatus { enabled, current_updates: Empty {} }))
    })
}

/// GET /_synapse/admin/v1/background_updates/enabled
pub fn background_enabled(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let enabled = !cx.deletions.background_updates_paused.load(Ordering::Relaxed);
        Ok(ok_json(&BackgroundEnabled { enabled }))
    })
}

/// The body of `POST v1/background_updates/enabled`.
#[derive(Deserialize)]
pub(crate) struct EnabledBody {
    enabled: bool,
}

/// POST /_synapse/admin/v1/background_updates/enabled
pub fn set_background_enabled(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let body: EnabledBody = parse_json(&req.body)?;
        cx.deletions.background_updates_paused.store(!body.enabled, Ordering::Relaxed);
        audit(&me, "background_updates_enabled", if body.enabled { "true" } else { "false" });
        Ok(ok_json(&BackgroundEnabled { enabled: body.enabled }))
    })
}

/// The body of `POST v1/background_updates/start_job`.
#[derive(Deserialize)]
pub(crate) struct StartJobBody {
    job_name: String,
}

/// POST /_synapse/admin/v1/background_updates/start_job
pub fn start_job(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let body: StartJobBody = parse_json(&req.body)?;
        // Synapse's two jobs rebuild tables Myelin keeps current as it goes
        // (room statistics, the user directory): nothing to redo.
        if !matches!(body.job_name.as_str(), "populate_stats_process_rooms" | "regenerate_directory") {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "M_UNKNOWN", "Invalid job_name"));
        }
        audit(&me, "start_job", &body.job_name);
        Ok(ok_empty())
    })
}
