//! User administration (Synapse admin API §"User Admin API"): the account list,
//! one account's details, create-or-modify, deactivation, password reset,
//! joined rooms, whois and the admin flag.

use http::StatusCode;
use myelin_engine::users::{Account, Profile};
use ruma::UserId;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{audit, bad_request, path_user, query_backwards, query_bool, query_choice, query_count, require_admin};
use crate::{
    auth::{query_param, require_user},
    error::ApiError,
    http_util::{json_response, ok_json, parse_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

/// Longest password accepted, as Synapse.
const MAX_PASSWORD: usize = 512;

/// One account in `GET /v2/users`.
#[derive(Serialize)]
struct ListedUser {
    name: String,
    is_guest: bool,
    admin: bool,
    user_type: Option<String>,
    deactivated: bool,
    erased: bool,
    shadow_banned: bool,
    displayname: Option<String>,
    avatar_url: Option<String>,
    /// Milliseconds in the list (seconds in the details), as Synapse answers.
    creation_ts: u64,
    last_seen_ts: Option<u64>,
    locked: bool,
}

/// `GET /v2/users/{userId}`.
#[derive(Serialize)]
struct UserDetails {
    name: String,
    displayname: Option<String>,
    threepids: Vec<Value>,
    avatar_url: Option<String>,
    is_guest: bool,
    admin: bool,
    deactivated: bool,
    erased: bool,
    shadow_banned: bool,
    /// Seconds since the epoch, as Synapse's `users.creation_ts`.
    creation_ts: u64,
    last_seen_ts: Option<u64>,
    appservice_id: Option<String>,
    consent_server_notice_sent: Option<String>,
    consent_version: Option<String>,
    consent_ts: Option<u64>,
    external_ids: Vec<Value>,
    user_type: Option<String>,
    locked: bool,
    suspended: bool,
}

/// The answer of `GET v2/users`: a page of accounts.
#[derive(Serialize)]
struct UserPage {
    users: Vec<ListedUser>,
    total: usize,
    /// Where the next page starts (a string, as Synapse answers), if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

fn last_seen(cx: &Ctx, user: &str) -> Result<Option<u64>, ApiError> {
    Ok(cx.engine.users.devices(user)?.iter().map(|(_, d)| d.last_seen_ts).max())
}

fn details(cx: &Ctx, user: &UserId) -> Result<Option<UserDetails>, ApiError> {
    let Some(account) = cx.engine.users.account(user)? else { return Ok(None) };
    let profile = cx.engine.users.profile(user.as_str())?.unwrap_or_default();
    Ok(Some(UserDetails {
        name: user.to_string(),
        displayname: profile.displayname,
        threepids: Vec::new(),
        avatar_url: profile.avatar_url,
        is_guest: false,
        admin: account.admin,
        deactivated: account.deactivated,
        erased: cx.engine.users.erased(user)?,
        shadow_banned: false,
        creation_ts: account.created_ms / 1000,
        last_seen_ts: last_seen(cx, user.as_str())?,
        appservice_id: cx.engine.appservices.claimant_of_user(user.as_str()).map(|a| a.id().to_owned()),
        consent_server_notice_sent: None,
        consent_version: None,
        consent_ts: None,
        external_ids: Vec::new(),
        user_type: None,
        locked: false,
        suspended: false,
    }))
}

/// The Synapse `order_by` values of the user list.
const USER_ORDERS: &[&str] = &[
    "name",
    "displayname",
    "is_guest",
    "admin",
    "deactivated",
    "user_type",
    "avatar_url",
    "shadow_banned",
    "creation_ts",
    "last_seen_ts",
    "locked",
];

/// GET /_synapse/admin/v2/users
pub fn list(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let from = query_count(&req, "from", 0)?;
        let limit = query_count(&req, "limit", 100)?;
        let user_id = query_param(&req, "user_id");
        let name = query_param(&req, "name").map(|n| n.to_lowercase());
        // No guest accounts here: `guests` is checked and changes nothing.
        query_bool(&req, "guests")?;
        let with_deactivated = query_bool(&req, "deactivated")?.unwrap_or(false);
        let admins = query_bool(&req, "admins")?;
        let with_locked = query_bool(&req, "locked")?;
        let order = query_choice(&req, "order_by", "name", USER_ORDERS)?;
        let backwards = query_backwards(&req)?;
        let _ = with_locked; // no locked accounts here

        let mut users = Vec::new();
        for (id, account) in cx.engine.users.list()? {
            let Ok(user) = UserId::parse(id.as_str()) else { continue };
            if account.deactivated && !with_deactivated || admins.is_some_and(|a| a != account.admin) {
                continue;
            }
            let profile = cx.engine.users.profile(&id)?.unwrap_or_default();
            let keep = match (&name, &user_id) {
                (Some(n), _) => {
                    user.localpart().to_lowercase().contains(n.as_str())
                        || profile.displayname.as_deref().is_some_and(|d| d.to_lowercase().contains(n.as_str()))
                }
                (None, Some(u)) => id.contains(u.as_str()),
                (None, None) => true,
            };
            if keep {
                users.push(listed(&cx, &user, &account, profile)?);
            }
        }
        // Stable: ties go by name, ascending.
        users.sort_by(|a, b| a.name.cmp(&b.name));
        match order {
            "displayname" => users.sort_by(|a, b| a.displayname.cmp(&b.displayname)),
            "admin" => users.sort_by_key(|u| u.admin),
            "deactivated" => users.sort_by_key(|u| u.deactivated),
            "avatar_url" => users.sort_by(|a, b| a.avatar_url.cmp(&b.avatar_url)),
            "creation_ts" => users.sort_by_key(|u| u.creation_ts),
            "last_seen_ts" => users.sort_by_key(|u| u.last_seen_ts),
            _ => {}
        }
        if backwards {
            users.reverse();
        }
        let total = users.len();
        let page: Vec<ListedUser> = users.into_iter().skip(from).take(limit).collect();
        let next_token = if from.saturating_add(limit) < total { Some((from + page.len()).to_string()) } else { None };
        Ok(ok_json(&UserPage { users: page, total, next_token }))
    })
}

fn listed(cx: &Ctx, user: &UserId, account: &Account, profile: Profile) -> Result<ListedUser, ApiError> {
    Ok(ListedUser {
        name: user.to_string(),
        is_guest: false,
        admin: account.admin,
        user_type: None,
        deactivated: account.deactivated,
        erased: cx.engine.users.erased(user)?,
        shadow_banned: false,
        displayname: profile.displayname,
        avatar_url: profile.avatar_url,
        creation_ts: account.created_ms,
        last_seen_ts: last_seen(cx, user.as_str())?,
        locked: false,
    })
}

/// 400 unless `user` is ours.
fn local(cx: &Ctx, user: &UserId, message: &str) -> Result<(), ApiError> {
    if user.server_name() != cx.engine.server_name {
        return Err(bad_request(message));
    }
    Ok(())
}

/// GET /_synapse/admin/v2/users/{userId}
pub fn get(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let user = path_user(&req, "user_id")?;
        local(&cx, &user, "Can only look up local users")?;
        let found = details(&cx, &user)?.ok_or_else(|| ApiError::not_found("User not found"))?;
        Ok(ok_json(&found))
    })
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn yes() -> bool {
    true
}

/// PUT /_synapse/admin/v2/users/{userId}
#[derive(Deserialize)]
pub(crate) struct PutUser {
    password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
    #[serde(default, deserialize_with = "present")]
    displayname: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    avatar_url: Option<Option<String>>,
    admin: Option<bool>,
    deactivated: Option<bool>,
    #[serde(default)]
    locked: bool,
    #[serde(default, deserialize_with = "present")]
    user_type: Option<Option<String>>,
    threepids: Option<Vec<Value>>,
    external_ids: Option<Vec<Value>>,
}

/// An empty string removes a display name or an avatar, as Synapse.
fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// Sets a password; unless `logout_devices` is false, logs out every device but
/// the caller's own (when an admin resets their own password), as Synapse.
async fn set_password(
    cx: &Ctx,
    me: &crate::auth::Authed,
    user: &UserId,
    password: &str,
    logout_devices: bool,
) -> Result<(), ApiError> {
    let keep = if !logout_devices {
        None
    } else if me.user_id == user {
        Some(me.device_id.as_str())
    } else {
        Some("")
    };
    let removed = cx.engine.users.set_password(user, password, keep).await?;
    cx.engine.forget_device_keys(user, &removed).await?;
    Ok(())
}

pub fn put(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let user = path_user(&req, "user_id")?;
        let body: PutUser = parse_json(&req.body)?;
        local(&cx, &user, "This endpoint can only be used with local users")?;
        if body.password.as_ref().is_some_and(|p| p.len() > MAX_PASSWORD) {
            return Err(bad_request("Invalid password"));
        }
        if body.deactivated == Some(true) && body.locked {
            return Err(bad_request("An user can't be deactivated and locked"));
        }
        if body.locked {
            return Err(bad_request("locking accounts is not supported by this server"));
        }
        if let Some(Some(kind)) = &body.user_type {
            return Err(bad_request(format!("user type {kind:?} is not supported by this server")));
        }
        if body.threepids.as_ref().is_some_and(|t| !t.is_empty())
            || body.external_ids.as_ref().is_some_and(|e| !e.is_empty())
        {
            return Err(bad_request("threepids and external_ids are not supported by this server's admin API"));
        }
        let users = &cx.engine.users;
        // One edit of a user at a time: two creations at once must not both see "no such
        // user" (the second then failed with M_USER_IN_USE); the second now modifies.
        let _claim = users
            .claim_txn(user.as_str(), "", "_synapse/admin/v2/users")
            .await
            .ok_or_else(|| ApiError::busy("too many requests in flight"))?;
        match users.account(&user)? {
            Some(account) => {
                if body.displayname.is_some() || body.avatar_url.is_some() {
                    let mut profile = users.profile(user.as_str())?.unwrap_or_default();
                    if let Some(name) = body.displayname {
                        profile.displayname = non_empty(name);
                    }
                    if let Some(url) = body.avatar_url {
                        profile.avatar_url = non_empty(url);
                    }
                    cx.engine.set_profile_everywhere(&user, &profile).await?;
                }
                if let Some(admin) = body.admin
                    && admin != account.admin
                {
                    if me.user_id == user && !admin {
                        return Err(bad_request("You may not demote yourself."));
                    }
                    users.set_admin(&user, admin).await?;
                }
                if let Some(password) = &body.password {
                    set_password(&cx, &me, &user, password, body.logout_devices).await?;
                }
                match body.deactivated {
                    Some(true) if !account.deactivated => {
                        cx.engine.deactivate_user(&user).await?;
                    }
                    Some(false) if account.deactivated => users.reactivate(&user).await?,
                    _ => {}
                }
                audit(&me, "modify_user", user.as_str());
                let found = details(&cx, &user)?.ok_or_else(|| ApiError::not_found("User not found"))?;
                Ok(ok_json(&found))
            }
            None => {
                // Checks the localpart's grammar (400 M_INVALID_USERNAME).
                let checked = users.user_id_for(user.localpart())?;
                if checked != user {
                    return Err(ApiError::new(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", "invalid user id"));
                }
                let admin = body.admin.unwrap_or(false);
                users.register(&user, body.password.as_deref(), admin, None, None, true).await?;
                let mut profile = users.profile(user.as_str())?.unwrap_or_default();
                if let Some(Some(name)) = body.displayname.filter(|n| n.as_ref().is_some_and(|n| !n.is_empty())) {
                    profile.displayname = Some(name);
                }
                if let Some(Some(url)) = body.avatar_url {
                    profile.avatar_url = non_empty(Some(url));
                }
                users.set_profile(user.as_str(), &profile).await?;
                audit(&me, "create_user", user.as_str());
                let found = details(&cx, &user)?.ok_or_else(|| ApiError::not_found("User not found"))?;
                Ok(json_response(StatusCode::CREATED, &found))
            }
        }
    })
}

/// POST /_synapse/admin/v1/deactivate/{userId}
#[derive(Deserialize, Default)]
pub(crate) struct DeactivateBody {
    #[serde(default)]
    erase: bool,
}

/// The answer of `POST v1/deactivate/{user_id}`.
#[derive(Serialize)]
struct Deactivated {
    id_server_unbind_result: &'static str,
}

pub fn deactivate(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let user = path_user(&req, "user_id")?;
        local(&cx, &user, "Can only deactivate local users")?;
        if cx.engine.users.account(&user)?.is_none() {
            return Err(ApiError::not_found("User not found"));
        }
        let body: DeactivateBody = parse_json_or_empty(&req.body)?;
        cx.engine.deactivate_user(&user).await?;
        if body.erase {
            cx.engine.users.erase(&user).await?;
        }
        audit(&me, if body.erase { "deactivate_and_erase_user" } else { "deactivate_user" }, user.as_str());
        // No identity server bindings are kept here to unbind.
        Ok(ok_json(&Deactivated { id_server_unbind_result: "no-support" }))
    })
}

/// POST /_synapse/admin/v1/reset_password/{userId}
#[derive(Deserialize)]
pub(crate) struct ResetPasswordBody {
    new_password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
}

pub fn reset_password(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let user = path_user(&req, "user_id")?;
        let body: ResetPasswordBody = parse_json(&req.body)?;
        let password = body.new_password.ok_or_else(|| ApiError::missing_param("Missing params: ['new_password']"))?;
        if cx.engine.users.account(&user)?.is_none() {
            return Err(ApiError::not_found("User not found"));
        }
        set_password(&cx, &me, &user, &password, body.logout_devices).await?;
        audit(&me, "reset_password", user.as_str());
        Ok(crate::response::ok_empty())
    })
}

/// The answer of `GET v1/users/{user_id}/joined_rooms`.
#[derive(Serialize)]
struct JoinedRooms {
    total: usize,
    joined_rooms: Vec<String>,
}

/// GET /_synapse/admin/v1/users/{userId}/joined_rooms
pub fn joined_rooms(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let user = path_user(&req, "user_id")?;
        let rooms: Vec<String> = cx
            .engine
            .rooms
            .rooms_of(user.as_str())?
            .into_iter()
            .filter(|(_, m)| m.membership == "join")
            .map(|(room, _)| room.to_string())
            .collect();
        Ok(ok_json(&JoinedRooms { total: rooms.len(), joined_rooms: rooms }))
    })
}

/// The answer of `GET v1/whois/{user_id}`.
#[derive(Serialize)]
struct Whois<'a> {
    user_id: &'a UserId,
    devices: WhoisDevices,
}

/// The `devices` of a whois answer: Synapse lists every session under the device `""`.
#[derive(Serialize)]
struct WhoisDevices {
    #[serde(rename = "")]
    all: WhoisDevice,
}

/// A device of a whois answer: its sessions.
#[derive(Serialize)]
struct WhoisDevice {
    sessions: Vec<WhoisSession>,
}

/// A session of a whois answer: its connections.
#[derive(Serialize)]
struct WhoisSession {
    connections: Vec<Connection>,
}

/// A connection of a whois answer: no IP or user agent is kept here (`null`).
#[derive(Serialize)]
struct Connection {
    ip: Option<String>,
    last_seen: u64,
    user_agent: Option<String>,
}

/// GET /_synapse/admin/v1/whois/{userId}: oneself, or anyone for an admin.
///
/// Synapse lists connections (IP, user agent, last seen) under the device `""`;
/// Myelin keeps no IPs or user agents, so there is one connection per device
/// with its last-seen time and `null` for the rest.
pub fn whois(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let user = path_user(&req, "user_id")?;
        let me = require_user(&cx, &req)?;
        if me.user_id != user {
            require_admin(&cx, &req)?;
        }
        local(&cx, &user, "Can only whois a local user")?;
        let connections: Vec<Connection> = cx
            .engine
            .users
            .devices(user.as_str())?
            .into_iter()
            .map(|(_, d)| Connection { ip: None, last_seen: d.last_seen_ts, user_agent: None })
            .collect();
        let all = WhoisDevice { sessions: vec![WhoisSession { connections }] };
        Ok(ok_json(&Whois { user_id: &user, devices: WhoisDevices { all } }))
    })
}

/// The answer of `GET v1/users/{user_id}/admin`.
#[derive(Serialize)]
struct IsAdmin {
    admin: bool,
}

/// GET /_synapse/admin/v1/users/{userId}/admin
pub fn is_admin(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let user = path_user(&req, "user_id")?;
        local(&cx, &user, "Only local users can be admins of this homeserver")?;
        let account = cx.engine.users.account(&user)?.ok_or_else(|| ApiError::not_found("User not found"))?;
        Ok(ok_json(&IsAdmin { admin: account.admin }))
    })
}

/// PUT /_synapse/admin/v1/users/{userId}/admin
#[derive(Deserialize)]
pub(crate) struct SetAdminBody {
    admin: Option<bool>,
}

pub fn set_admin(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let user = path_user(&req, "user_id")?;
        local(&cx, &user, "Only local users can be admins of this homeserver")?;
        let body: SetAdminBody = parse_json(&req.body)?;
        let admin = body.admin.ok_or_else(|| ApiError::missing_param("Missing params: ['admin']"))?;
        if me.user_id == user && !admin {
            return Err(bad_request("You may not demote yourself."));
        }
        cx.engine.users.set_admin(&user, admin).await?;
        audit(&me, if admin { "make_admin" } else { "revoke_admin" }, user.as_str());
        Ok(crate::response::ok_empty())
    })
}
