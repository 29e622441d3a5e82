//! Media administration, with Synapse's paths, parameters, answers and errors:
//! Synapse admin API §"Media Admin API" ("Query a piece of media by ID",
//! "Quarantining media by ID", "Remove media from quarantine by ID", "Delete a
//! specific local media", "Delete local media by date or size", "Purge Remote
//! Media API"), §"User Admin API" ("List media uploaded by a user", "Delete media
//! uploaded by a user") and §"Users' media usage statistics".
//!
//! Unlike Synapse, a page of a user's media or of the statistics holds at most
//! [`MAX_PAGE`] rows (a larger `limit` is served that many, `next_token` says
//! where to go on), so one DELETE of a user's media removes at most that many.
//! Nothing is protected from quarantine here: `safe_from_quarantine` is false.

use std::cmp::Ordering;

use http::Method;
use myelin_engine::media::MediaMeta;
use ruma::UserId;
use serde::Serialize;

use super::{
    audit, bad_request, path_user, query_backwards, query_bool, query_choice, query_count, query_int, require_admin,
};
use crate::{
    auth::query_param,
    error::ApiError,
    http_util::{ok_empty, ok_json},
    router::{Ctx, HandlerFuture, Req, Router},
};

/// Most rows one page of a listing (or one deletion of a user's media) holds.
pub const MAX_PAGE: usize = 1000;

/// Adds the media admin routes.
pub fn add(r: &mut Router) {
    use Method as M;
    const A: &str = "/_synapse/admin/v1";
    let mut add = |method: Method, path: &str, handler| {
        r.add(method, &format!("{A}{path}"), handler);
    };
    add(M::GET, "/media/{server_name}/{media_id}", query_media);
    add(M::DELETE, "/media/{server_name}/{media_id}", delete_media);
    add(M::POST, "/media/delete", delete_old);
    // Deprecated in Synapse 1.78, kept by Synapse.
    add(M::POST, "/media/{server_name}/delete", delete_old);
    add(M::POST, "/media/quarantine/{server_name}/{media_id}", quarantine);
    add(M::POST, "/media/unquarantine/{server_name}/{media_id}", unquarantine);
    add(M::GET, "/users/{user_id}/media", list_user_media);
    add(M::DELETE, "/users/{user_id}/media", delete_user_media);
    add(M::GET, "/statistics/users/media", statistics);
    add(M::POST, "/purge_media_cache", purge_media_cache);
}

/// The `mxc://` form of a path's `{server_name}/{media_id}`, for the audit log.
fn mxc(server: &str, id: &str) -> String {
    format!("mxc://{server}/{id}")
}

/// The answer of `GET v1/media/{server_name}/{media_id}`.
#[derive(Serialize)]
struct QueriedMedia<'a> {
    media_info: MediaInfo<'a>,
}

/// A media's `media_info`, as Synapse shows it.
#[derive(Serialize)]
struct MediaInfo<'a> {
    media_origin: Option<&'a str>,
    user_id: Option<String>,
    media_id: &'a str,
    media_type: Option<String>,
    media_length: u64,
    upload_name: Option<String>,
    created_ts: u64,
    filesystem_id: Option<&'a str>,
    url_cache: Option<String>,
    last_access_ts: Option<u64>,
    quarantined_by: Option<String>,
    authenticated: bool,
    safe_from_quarantine: Option<bool>,
    sha256: Option<&'a str>,
}

/// GET /_synapse/admin/v1/media/{serverName}/{mediaId}
fn query_media(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let (server, id) = (req.param("server_name")?, req.param("media_id")?);
        let meta = cx.engine.media.meta(server, id)?.ok_or_else(|| ApiError::not_found("Unknown media"))?;
        let local = server == cx.engine.server_name.as_str();
        let hash = meta.hash.as_str();
        Ok(ok_json(&QueriedMedia {
            media_info: MediaInfo {
                media_origin: if local { None } else { Some(server) },
                user_id: meta.uploader,
                media_id: id,
                media_type: meta.content_type,
                media_length: meta.size,
                upload_name: meta.filename,
                created_ts: meta.created_ms,
                filesystem_id: if local { None } else { Some(hash) },
                url_cache: None,
                last_access_ts: meta.last_access_ms,
                quarantined_by: meta.quarantined_by,
                authenticated: true,
                safe_from_quarantine: if local { Some(false) } else { None },
                sha256: Some(hash).filter(|h| !h.is_empty()),
            },
        }))
    })
}

/// The answer of the media deletions: `{"deleted_media": [...], "total": n}`.
#[derive(Serialize)]
struct DeletedMedia {
    total: usize,
    deleted_media: Vec<String>,
}

/// `{"deleted_media": [...], "total": n}`.
fn deleted(ids: Vec<String>) -> crate::http_util::Resp {
    ok_json(&DeletedMedia { total: ids.len(), deleted_media: ids })
}

/// DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}
fn delete_media(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let (server, id) = (req.param("server_name")?, req.param("media_id")?);
        if server != cx.engine.server_name.as_str() {
            return Err(bad_request("Can only delete local media"));
        }
        if cx.engine.media.meta(server, id)?.is_none() {
            return Err(ApiError::not_found("Unknown media"));
        }
        let ids = cx.engine.media.delete_local(&[id.to_owned()]).await?;
        audit(&me, "delete_media", &mxc(server, id));
        Ok(deleted(ids))
    })
}

/// `before_ts`, required, in ms; refused below 30,000,000,000 as Synapse refuses
/// it (a time in seconds mistaken for milliseconds).
fn before_ts(req: &Req) -> Result<u64, ApiError> {
    if query_param(req, "before_ts").is_none() {
        return Err(ApiError::missing_param("Missing required integer query parameter before_ts"));
    }
    let ts = query_int(req, "before_ts", 0)?;
    if ts < 0 {
        return Err(ApiError::invalid_param("Query parameter before_ts must be a positive integer."));
    }
    if ts < 30_000_000_000 {
        return Err(ApiError::invalid_param(
            "Query parameter before_ts you provided is from the year 1970. \
             Double check that you are providing a timestamp in milliseconds.",
        ));
    }
    Ok(ts.unsigned_abs())
}

/// A non-negative integer query parameter in Synapse's words.
fn query_u64(req: &Req, name: &str, default: i64) -> Result<u64, ApiError> {
    u64::try_from(query_int(req, name, default)?).map_err(|_| {
        ApiError::invalid_param(format!("Query parameter {name} must be a string representing a positive integer."))
    })
}

/// POST /_synapse/admin/v1/media/delete (and the deprecated `…/media/{serverName}/delete`)
fn delete_old(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let before = before_ts(&req)?;
        let size_gt = query_u64(&req, "size_gt", 0)?;
        let keep_profiles = query_bool(&req, "keep_profiles")?.unwrap_or(true);
        if req.param("server_name").is_ok_and(|s| s != cx.engine.server_name.as_str()) {
            return Err(bad_request("Can only delete local media"));
        }
        let ids = cx.engine.delete_old_local_media(before, size_gt, keep_profiles).await?;
        audit(&me, "delete_old_media", &format!("before_ts={before} size_gt={size_gt} deleted={}", ids.len()));
        Ok(deleted(ids))
    })
}

/// POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}: `{}`, also
/// for a media id not held here (Synapse's answer; nothing is recorded then).
fn quarantine(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let (server, id) = (req.param("server_name")?, req.param("media_id")?);
        cx.engine.media.set_quarantine(server, id, Some(me.user_id.as_str())).await?;
        audit(&me, "quarantine_media", &mxc(server, id));
        Ok(ok_empty())
    })
}

/// POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}: `{}`.
fn unquarantine(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let (server, id) = (req.param("server_name")?, req.param("media_id")?);
        cx.engine.media.set_quarantine(server, id, None).await?;
        audit(&me, "unquarantine_media", &mxc(server, id));
        Ok(ok_empty())
    })
}

/// A comparison of two `(media id, metadata)` by one field.
type ByField = fn(&(String, MediaMeta), &(String, MediaMeta)) -> Ordering;

/// Synapse's `MediaSortOrder` values and what they compare (nothing is
/// protected here, so `safe_from_quarantine` leaves the media id to decide).
const MEDIA_ORDERS: [(&str, ByField); 8] = [
    ("media_id", |a, b| a.0.cmp(&b.0)),
    ("upload_name", |a, b| a.1.filename.cmp(&b.1.filename)),
    ("created_ts", |a, b| a.1.created_ms.cmp(&b.1.created_ms)),
    ("last_access_ts", |a, b| a.1.last_access_ms.cmp(&b.1.last_access_ms)),
    ("media_length", |a, b| a.1.size.cmp(&b.1.size)),
    ("media_type", |a, b| a.1.content_type.cmp(&b.1.content_type)),
    ("quarantined_by", |a, b| a.1.quarantined_by.cmp(&b.1.quarantined_by)),
    ("safe_from_quarantine", |_, _| Ordering::Equal),
];

/// One media in `GET /v1/users/{userId}/media`.
#[derive(Serialize)]
struct ListedMedia {
    media_id: String,
    media_type: Option<String>,
    media_length: u64,
    upload_name: Option<String>,
    created_ts: u64,
    last_access_ts: Option<u64>,
    quarantined_by: Option<String>,
    safe_from_quarantine: bool,
}

/// The answer of `GET v1/users/{user_id}/media`: a page of the user's media.
#[derive(Serialize)]
struct UserMediaPage {
    total: usize,
    /// Where the next page starts, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<usize>,
    media: Vec<ListedMedia>,
}

/// The page of the path user's media the request asks for, the user's media
/// count and the page's `from` and `limit`, after Synapse's checks in Synapse's order.
async fn user_media_page(cx: &Ctx, req: &Req) -> Result<(Vec<(String, MediaMeta)>, usize, usize, usize), ApiError> {
    let user = path_user(req, "user_id")?;
    if user.server_name() != cx.engine.server_name {
        return Err(bad_request("Can only look up local users"));
    }
    if cx.engine.users.account(&user)?.is_none() {
        return Err(ApiError::not_found("Unknown user"));
    }
    let from = query_count(req, "from", 0)?;
    let limit = query_count(req, "limit", 100)?.min(MAX_PAGE);
    // Neither `order_by` nor `dir`: newest first, as Synapse.
    let (by, backwards) = if query_param(req, "order_by").is_none() && query_param(req, "dir").is_none() {
        ("created_ts", true)
    } else {
        let names: Vec<&str> = MEDIA_ORDERS.iter().map(|(name, _)| *name).collect();
        (query_choice(req, "order_by", "created_ts", &names)?, query_backwards(req)?)
    };
    let field = MEDIA_ORDERS.iter().find(|(name, _)| *name == by).map_or(MEDIA_ORDERS[2].1, |(_, f)| *f);
    let order =
        move |a: &(String, MediaMeta), b: &(String, MediaMeta)| if backwards { field(b, a) } else { field(a, b) };
    let (page, total) = cx.engine.media.uploaded_by(user.as_str(), from, limit, order).await?;
    Ok((page, total, from, limit))
}

/// GET /_synapse/admin/v1/users/{userId}/media
fn list_user_media(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let (page, total, from, limit) = user_media_page(&cx, &req).await?;
        let media: Vec<ListedMedia> = page
            .into_iter()
            .map(|(media_id, m)| ListedMedia {
                media_id,
                media_type: m.content_type,
                media_length: m.size,
                upload_name: m.filename,
                created_ts: m.created_ms,
                last_access_ts: m.last_access_ms,
                quarantined_by: m.quarantined_by,
                safe_from_quarantine: false,
            })
            .collect();
        let next_token = if from.saturating_add(limit) < total { Some(from + media.len()) } else { None };
        Ok(ok_json(&UserMediaPage { total, next_token, media }))
    })
}

/// DELETE /_synapse/admin/v1/users/{userId}/media: the page the same request
/// would list (no `next_token`: what is left has moved up).
fn delete_user_media(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let (page, ..) = user_media_page(&cx, &req).await?;
        let ids: Vec<String> = page.into_iter().map(|(id, _)| id).collect();
        let ids = cx.engine.media.delete_local(&ids).await?;
        audit(&me, "delete_user_media", &format!("{} deleted={}", req.param("user_id")?, ids.len()));
        Ok(deleted(ids))
    })
}

/// One user in `GET /v1/statistics/users/media`.
#[derive(Serialize)]
struct UserUsage {
    user_id: String,
    displayname: Option<String>,
    media_count: u64,
    media_length: u64,
}

/// The answer of `GET v1/statistics/users/media`: a page of users' media usage.
#[derive(Serialize)]
struct UsagePage {
    total: usize,
    /// Where the next page starts, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<usize>,
    users: Vec<UserUsage>,
}

/// GET /_synapse/admin/v1/statistics/users/media
fn statistics(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let orders = ["media_length", "media_count", "user_id", "displayname"];
        let order = query_choice(&req, "order_by", "user_id", &orders)?;
        let from = query_count(&req, "from", 0)?;
        let limit = query_count(&req, "limit", 100)?.min(MAX_PAGE);
        let from_ts = query_u64(&req, "from_ts", 0)?;
        let until_ts = match query_param(&req, "until_ts") {
            None => None,
            Some(_) => Some(query_u64(&req, "until_ts", 0)?),
        };
        if until_ts.is_some_and(|u| u <= from_ts) {
            return Err(ApiError::invalid_param("Query parameter until_ts must be greater than from_ts."));
        }
        let term = query_param(&req, "search_term").map(|t| t.to_lowercase());
        if term.as_deref() == Some("") {
            return Err(ApiError::invalid_param("Query parameter search_term cannot be an empty string."));
        }
        let backwards = query_backwards(&req)?;

        let mut users = Vec::new();
        for (user_id, media_count, media_length) in cx.engine.media.usage_by_uploader(from_ts, until_ts).await? {
            let displayname = cx.engine.users.profile(&user_id)?.and_then(|p| p.displayname);
            if let Some(t) = &term {
                let localpart = UserId::parse(user_id.as_str()).map(|u| u.localpart().to_lowercase());
                let hit = localpart.is_ok_and(|l| l.contains(t.as_str()))
                    || displayname.as_deref().is_some_and(|d| d.to_lowercase().contains(t.as_str()));
                if !hit {
                    continue;
                }
            }
            users.push(UserUsage { user_id, displayname, media_count, media_length });
        }
        // By user id already; stable, so ties stay by user id.
        match order {
            "media_length" => users.sort_by_key(|u| u.media_length),
            "media_count" => users.sort_by_key(|u| u.media_count),
            "displayname" => users.sort_by(|a, b| a.displayname.cmp(&b.displayname)),
            _ => {}
        }
        if backwards {
            users.reverse();
        }
        let total = users.len();
        let page: Vec<UserUsage> = users.into_iter().skip(from).take(limit).collect();
        let next_token = if from.saturating_add(limit) < total { Some(from + page.len()) } else { None };
        Ok(ok_json(&UsagePage { total, next_token, users: page }))
    })
}

/// The answer of `POST v1/purge_media_cache`: how many media were deleted.
#[derive(Serialize)]
struct PurgedMediaCache {
    deleted: usize,
}

/// POST /_synapse/admin/v1/purge_media_cache: other servers' cached media last
/// used before `before_ts`, except quarantined media; `{"deleted": n}`.
fn purge_media_cache(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let before = before_ts(&req)?;
        let n = cx.engine.media.purge_remote(cx.engine.server_name.as_str(), before).await?;
        audit(&me, "purge_media_cache", &format!("before_ts={before} deleted={n}"));
        Ok(ok_json(&PurgedMediaCache { deleted: n }))
    })
}
