//! Client-Server API §"Device management" (`/devices`, `/delete_devices`,
//! deleting with user-interactive auth), §"Capabilities negotiation"
//! (`/capabilities`) and `/account/3pid` (always empty: no identity server).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::account::{AuthData, AuthOnly, password_uia};
use crate::{
    auth::require_user,
    error::ApiError,
    http_util::{ok_empty, ok_json, parse_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

/// A device as `/devices` shows it.
#[derive(Serialize)]
struct DeviceInfo<'a> {
    device_id: &'a str,
    display_name: Option<&'a str>,
    last_seen_ts: u64,
}

impl<'a> DeviceInfo<'a> {
    fn new(id: &'a str, d: &'a myelin_engine::users::Device) -> Self {
        Self { device_id: id, display_name: d.display_name.as_deref(), last_seen_ts: d.last_seen_ts }
    }
}

/// The answer to `GET /devices`.
#[derive(Serialize)]
struct DeviceList<'a> {
    devices: Vec<DeviceInfo<'a>>,
}

/// GET /_matrix/client/v3/devices
pub fn devices(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let devices = cx.engine.users.devices(me.user_id.as_str())?;
        Ok(ok_json(&DeviceList { devices: devices.iter().map(|(id, d)| DeviceInfo::new(id, d)).collect() }))
    })
}

/// GET /_matrix/client/v3/devices/{deviceId}
pub fn device(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let want = req.param("device_id")?;
        let devices = cx.engine.users.devices(me.user_id.as_str())?;
        let (id, d) = devices.iter().find(|(id, _)| id == want).ok_or_else(|| ApiError::not_found("no such device"))?;
        Ok(ok_json(&DeviceInfo::new(id, d)))
    })
}

/// `PUT /devices/{deviceId}`.
#[derive(Deserialize)]
pub(crate) struct RenameBody {
    display_name: Option<String>,
}

/// PUT /_matrix/client/v3/devices/{deviceId}
pub fn rename_device(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: RenameBody = parse_json(&req.body)?;
        cx.engine.users.rename_device(me.user_id.as_str(), req.param("device_id")?, body.display_name).await?;
        Ok(ok_empty())
    })
}

/// DELETE /_matrix/client/v3/devices/{deviceId} (user-interactive auth with the password)
pub fn delete_device(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: AuthOnly = parse_json_or_empty(&req.body)?;
        if let Some(challenge) = password_uia(&cx, &me.user_id, body.auth).await? {
            return Ok(challenge);
        }
        let device = req.param("device_id")?;
        if !cx.engine.users.devices(me.user_id.as_str())?.iter().any(|(id, _)| id == device) {
            return Err(ApiError::not_found("no such device"));
        }
        cx.engine.users.logout(me.user_id.as_str(), device).await?;
        myelin_engine::federation::e2ee::device_removed(&cx.engine, &me.user_id, device).await?;
        Ok(ok_empty())
    })
}

/// The `/capabilities` answer.
#[derive(Serialize)]
struct CapabilitiesAnswer {
    capabilities: Capabilities,
}

/// What this server lets a client do.
#[derive(Serialize)]
struct Capabilities {
    #[serde(rename = "m.change_password")]
    change_password: Enabled,
    #[serde(rename = "m.room_versions")]
    room_versions: RoomVersions,
    #[serde(rename = "m.set_displayname")]
    set_displayname: Enabled,
    #[serde(rename = "m.set_avatar_url")]
    set_avatar_url: Enabled,
    /// No third-party identifiers (`/account/3pid` is always empty): said so
    /// rather than left for clients to guess.
    #[serde(rename = "m.3pid_changes")]
    threepid_changes: Enabled,
    #[serde(rename = "m.get_login_token")]
    get_login_token: Enabled,
}

/// A capability that is on or off.
#[derive(Serialize)]
struct Enabled {
    enabled: bool,
}

/// The room versions rooms can be created with.
#[derive(Serialize)]
struct RoomVersions {
    default: String,
    available: BTreeMap<&'static str, &'static str>,
}

/// GET /_matrix/client/v3/capabilities
pub fn capabilities(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_user(&cx, &req)?;
        let on = || Enabled { enabled: true };
        Ok(ok_json(&CapabilitiesAnswer {
            capabilities: Capabilities {
                change_password: on(),
                room_versions: RoomVersions {
                    default: myelin_engine::rooms::version::DEFAULT.to_string(),
                    available: myelin_engine::rooms::version::CREATABLE
                        .iter()
                        .map(|v| (v.as_str(), "stable"))
                        .collect(),
                },
                set_displayname: on(),
                set_avatar_url: on(),
                threepid_changes: Enabled { enabled: false },
                get_login_token: on(),
            },
        }))
    })
}

/// The `/account/3pid` answer: always empty.
#[derive(Serialize)]
struct Threepids {
    threepids: [(); 0],
}

/// GET /_matrix/client/v3/account/3pid: this server binds no third-party identifiers.
pub fn threepids(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_user(&cx, &req)?;
        Ok(ok_json(&Threepids { threepids: [] }))
    })
}

/// `POST /delete_devices`.
#[derive(Deserialize)]
struct DeleteDevicesBody {
    devices: Vec<String>,
    auth: Option<AuthData>,
}

/// POST /_matrix/client/v3/delete_devices (user-interactive auth with the password)
pub fn delete_devices(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_user(&cx, &req)?;
        let body: DeleteDevicesBody = parse_json(&req.body)?;
        if let Some(challenge) = password_uia(&cx, &me.user_id, body.auth).await? {
            return Ok(challenge);
        }
        for device in &body.devices {
            cx.engine.users.logout(me.user_id.as_str(), device).await?;
            myelin_engine::federation::e2ee::device_removed(&cx.engine, &me.user_id, device).await?;
        }
        Ok(ok_empty())
    })
}
