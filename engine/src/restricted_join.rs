//! Joins to restricted rooms (room versions 8 and later; `knock_restricted`
//! from 10): who this server lets join, and through which of its users.
//!
//! Client-Server API §"Restricted rooms":
//!
//! > If the user is not a member of at least one of the rooms, the
//! > homeserver should return an error response with HTTP status code of
//! > 403 and an `errcode` of `M_FORBIDDEN`.
//! >
//! > It is possible for a resident homeserver (one which receives a
//! > `/make_join` / `/send_join` request) to not know if the user is in some
//! > of the allowed rooms (due to not participating in them). If the user is
//! > not in any of the allowed rooms that are known to the homeserver it
//! > should return an error response with HTTP status code of 400 with an
//! > `errcode` of `M_UNABLE_TO_AUTHORISE_JOIN`. […] A chosen resident
//! > homeserver might also be unable to issue invites […]. In this case it
//! > should return an error response with HTTP status code of 400 and an
//! > `errcode` of `M_UNABLE_TO_GRANT_JOIN`. The joining server should attempt
//! > to join via another resident homeserver.
//!
//! and the auth rules of versions 8+: a join without an invite needs
//! `join_authorised_via_users_server` naming a joined user with the power to
//! invite, and the event signed by that user's server. So the authorising
//! server puts one of its users in the `make_join` template (or in a local
//! join) and co-signs the join at `send_join`.
//!
//! "Known to the homeserver" is read as Synapse does: an allowed room counts
//! when this server takes part in it (a user of ours is joined), so its
//! member list is current here.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::TimelineEventType};

use crate::{
    Engine, power,
    rooms::{RoomError, version},
};

/// Why this server cannot let a user join a restricted room.
#[derive(Debug, thiserror::Error)]
pub enum RestrictedJoinError {
    /// This server takes part in none of the allowed rooms (`M_UNABLE_TO_AUTHORISE_JOIN`).
    #[error("this server cannot check membership of any room that {0} allows joining from")]
    CannotVerify(OwnedRoomId),
    /// The user is in none of the allowed rooms this server takes part in (`M_FORBIDDEN`).
    #[error("{user} is not a member of any room that {room} allows joining from")]
    NotAllowed {
        /// The joining user.
        user: OwnedUserId,
        /// The restricted room.
        room: OwnedRoomId,
    },
    /// No joined user of this server may invite (`M_UNABLE_TO_GRANT_JOIN`).
    #[error("no user of this server may invite to {0}")]
    CannotGrant(OwnedRoomId),
    /// Reading the rooms failed.
    #[error(transparent)]
    Rooms(#[from] RoomError),
}

/// The membership `user` has in `room` by its current state.
fn membership(engine: &Engine, room: &RoomId, user: &str) -> Result<Option<String>, RoomError> {
    Ok(engine
        .rooms
        .state_event(room, "m.room.member", user)?
        .and_then(|m| m.content_value()["membership"].as_str().map(str::to_owned)))
}

/// Whether a user of this server is joined to `room`.
fn takes_part(engine: &Engine, room: &RoomId) -> bool {
    engine.rooms.room_version(room).is_ok()
        && engine.rooms.joined_servers_now(room).is_ok_and(|s| s.iter().any(|s| s == engine.server_name.as_str()))
}

/// The user of this server through whom `user` may join `room`: `None` when
/// the room's join rule is not restricted in its version, or when `user`
/// needs none (invited, joined, or banned — the auth rules then decide).
/// The authoriser is the joined local user with the most power (ties: the
/// smallest id), so the choice is stable.
pub fn authorising_user(
    engine: &Engine,
    room: &RoomId,
    user: &UserId,
) -> Result<Option<OwnedUserId>, RestrictedJoinError> {
    let rules = version::rules(&engine.rooms.room_version(room)?)?;
    let Some(join_rules) = engine.rooms.state_event(room, "m.room.join_rules", "")? else { return Ok(None) };
    let content = join_rules.content_value();
    let restricted = match content["join_rule"].as_str() {
        Some("restricted") => rules.authorization.restricted_join_rule,
        Some("knock_restricted") => rules.authorization.knock_restricted_join_rule,
        _ => false,
    };
    if !restricted {
        return Ok(None);
    }
    if matches!(membership(engine, room, user.as_str())?.as_deref(), Some("join" | "invite" | "ban")) {
        return Ok(None);
    }
    // §"m.room.join_rules": entries that are not `m.room_membership` with a room id are ignored.
    let allowed: Vec<OwnedRoomId> = content["allow"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "m.room_membership")
        .filter_map(|a| a["room_id"].as_str().and_then(|r| RoomId::parse(r).ok()))
        .collect();
    let mut verifiable = false;
    let mut member = false;
    for allowed_room in &allowed {
        if !takes_part(engine, allowed_room) {
            continue;
        }
        verifiable = true;
        if membership(engine, allowed_room, user.as_str())?.as_deref() == Some("join") {
            member = true;
            break;
        }
    }
    if !member {
        return Err(if verifiable {
            RestrictedJoinError::NotAllowed { user: user.to_owned(), room: room.to_owned() }
        } else {
            RestrictedJoinError::CannotVerify(room.to_owned())
        });
    }
    let needed = power::threshold(&engine.rooms, room, "invite", 0)?;
    let mut best: Option<(i64, OwnedUserId)> = None;
    for event in engine.rooms.current_state(room)? {
        if event.kind != TimelineEventType::RoomMember || event.content_value()["membership"] != "join" {
            continue;
        }
        let Some(candidate) = event.state_key.as_deref().and_then(|k| UserId::parse(k).ok()) else { continue };
        if candidate.server_name() != engine.server_name {
            continue;
        }
        let level = power::user_power(&engine.rooms, room, candidate.as_str())?;
        if level < needed {
            continue;
        }
        let better = match &best {
            None => true,
            Some((l, u)) => level > *l || (level == *l && candidate < *u),
        };
        if better {
            best = Some((level, candidate));
        }
    }
    best.map(|(_, u)| Some(u)).ok_or_else(|| RestrictedJoinError::CannotGrant(room.to_owned()))
}
