//! Room upgrades (Client-Server API §"Room Upgrades",
//! `POST /rooms/{roomId}/upgrade`), between any two versions 1–12.
//!
//! > When the client requests to upgrade a known room to a known version,
//! > the server: 1. Checks that the user has permission to send
//! > `m.room.tombstone` events in the room. 2. Creates a replacement room
//! > with a `m.room.create` event containing a `predecessor` field […].
//! > 3. Replicates transferable state events to the new room. […]
//! > 4. Moves any local aliases to the new room. 5. Sends a
//! > `m.room.tombstone` event to the old room […]. 6. If possible, the
//! > power levels in the old room should also be modified to prevent sending
//! > of events and inviting new users. For example, setting `events_default`
//! > and `invite` to the greater of `50` and `users_default + 1`.
//!
//! Power levels are copied with string levels (allowed before version 10)
//! made integers, since from version 10 only integers are. Creators are
//! dropped from `users` when the new version privileges them (12), and the
//! upgrader is listed at 100 when the old version privileged it and the new
//! one does not. Membership is not carried over (as in Synapse): members
//! follow the tombstone.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId, events::TimelineEventType};
use serde_json::{Value as JsonValue, json};

use crate::{
    Engine, EngineError,
    rooms::{CreateRoom, NewEvent, Preset, RoomError, version},
    util::power_level as level,
};

/// State copied from the old room as it is (the spec's list, power levels apart).
const TRANSFERRED: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

/// Power-levels content with every level an integer (what version 10+ requires).
fn integer_levels(mut pl: JsonValue) -> JsonValue {
    let Some(top) = pl.as_object_mut() else { return pl };
    for (key, value) in top.iter_mut() {
        match value {
            JsonValue::Object(map) if matches!(key.as_str(), "users" | "events" | "notifications") => {
                for v in map.values_mut() {
                    if let Some(n) = level(v) {
                        *v = json!(n);
                    }
                }
            }
            other => {
                if let Some(n) = level(other) {
                    *other = json!(n);
                }
            }
        }
    }
    pl
}

impl Engine {
    /// Upgrades `old` to `new_version` for local user `user`; returns the replacement room.
    pub async fn upgrade_room(
        &self,
        user: &UserId,
        old: &RoomId,
        new_version: RoomVersionId,
        additional_creators: Vec<OwnedUserId>,
    ) -> Result<OwnedRoomId, EngineError> {
        let new_rules = version::check_creatable(&new_version)?;
        let rooms = &self.rooms;
        let old_rules = version::rules(&rooms.room_version(old)?)?;
        let member = rooms.state_event(old, "m.room.member", user.as_str())?;
        if member.map(|m| m.content_value()["membership"].clone()) != Some(json!("join")) {
            return Err(RoomError::Forbidden(format!("{user} is not in {old}")).into());
        }
        let create =
            rooms.state_event(old, "m.room.create", "")?.ok_or_else(|| RoomError::UnknownRoom(old.to_string()))?;
        let create_content = create.content_value();
        let old_creator = create.sender == user
            || create_content["additional_creators"].as_array().is_some_and(|a| a.iter().any(|c| c == user.as_str()));
        let pl = rooms.state_event(old, "m.room.power_levels", "")?.map(|p| integer_levels(p.content_value()));

        // 1. The upgrader may send m.room.tombstone.
        let (power, needed) = match &pl {
            _ if old_creator && old_rules.authorization.explicitly_privilege_room_creators => (i64::MAX, 0),
            Some(pl) => (
                level(&pl["users"][user.as_str()]).or_else(|| level(&pl["users_default"])).unwrap_or(0),
                level(&pl["events"]["m.room.tombstone"]).or_else(|| level(&pl["state_default"])).unwrap_or(50),
            ),
            // No power levels: the creator has 100, state needs 0.
            None => (if create.sender == user { 100 } else { 0 }, 0),
        };
        if power < needed {
            return Err(RoomError::Forbidden(format!(
                "upgrading needs power {needed} to send m.room.tombstone; {user} has {power}"
            ))
            .into());
        }

        // 2./3. The replacement room, with the old room's transferable state.
        let mut final_pl = pl.clone();
        let mut initial_pl = None;
        if let Some(pl) = &mut final_pl {
            if !pl["users"].is_object() {
                pl["users"] = json!({});
            }
            let privileged = new_rules.authorization.explicitly_privilege_room_creators;
            if let Some(users) = pl["users"].as_object_mut() {
                if privileged {
                    users.remove(user.as_str());
                    for c in &additional_creators {
                        users.remove(c.as_str());
                    }
                } else if power == i64::MAX {
                    users.insert(user.to_string(), json!(100));
                }
            }
            // The upgrader must be able to send the copied state; if not, it is
            // raised for the creation and the copied levels are restored after.
            let top = pl["events"]
                .as_object()
                .into_iter()
                .flat_map(|e| e.values().filter_map(level))
                .chain(level(&pl["state_default"]))
                .max()
                .unwrap_or(50);
            let own = level(&pl["users"][user.as_str()]).or_else(|| level(&pl["users_default"])).unwrap_or(0);
            if !privileged && own < top {
                let mut raised = pl.clone();
                raised["users"][user.as_str()] = json!(top);
                initial_pl = Some(raised);
            }
        }
        let mut creation = serde_json::Map::new();
        for key in ["type", "m.federate"] {
            if let Some(v) = create_content.get(key) {
                creation.insert(key.into(), v.clone());
            }
        }
        let last = rooms.extremities(old)?.into_iter().next();
        creation.insert("predecessor".into(), json!({ "room_id": old, "event_id": last }));
        if new_rules.authorization.additional_room_creators && !additional_creators.is_empty() {
            creation.insert("additional_creators".into(), json!(additional_creators));
        }
        let mut initial_state = Vec::new();
        for kind in TRANSFERRED {
            if let Some(event) = rooms.state_event(old, kind, "")? {
                initial_state.push(NewEvent::state(TimelineEventType::from(*kind), "", event.content_value()));
            }
        }
        let profile = self.users.profile(user.as_str())?.map(|p| {
            let mut extra = serde_json::Map::new();
            if let Some(d) = p.displayname {
                extra.insert("displayname".into(), json!(d));
            }
            if let Some(a) = p.avatar_url {
                extra.insert("avatar_url".into(), json!(a));
            }
            JsonValue::Object(extra)
        });
        let request = CreateRoom {
            version: Some(new_version),
            preset: Some(Preset::PrivateChat),
            initial_state,
            power_level_content_override: initial_pl.clone().or_else(|| final_pl.clone()),
            creation_content: Some(JsonValue::Object(creation)),
            creator_profile: profile,
            ..Default::default()
        };
        let new = rooms.create_room(user, request).await?;
        if initial_pl.is_some()
            && let Some(pl) = final_pl
        {
            rooms.send(user, &new, NewEvent::state(TimelineEventType::RoomPowerLevels, "", pl)).await?;
        }

        // 4. Local aliases, the canonical alias and the directory entry move.
        for alias in self.directory.aliases_of(old.as_str())? {
            self.directory.remove(&alias).await?;
            self.directory.create(&alias, new.as_str(), user.as_str()).await?;
        }
        if let Some(canonical) = rooms.state_event(old, "m.room.canonical_alias", "")? {
            let content = canonical.content_value();
            if content.as_object().is_some_and(|c| !c.is_empty()) {
                let kind = TimelineEventType::RoomCanonicalAlias;
                if let Err(e) = rooms.send(user, &new, NewEvent::state(kind.clone(), "", content)).await {
                    tracing::warn!(room_id = %new, error = %e, "copying the canonical alias failed");
                } else if let Err(e) = rooms.send(user, old, NewEvent::state(kind, "", json!({}))).await {
                    tracing::warn!(room_id = %old, error = %e, "clearing the old canonical alias failed");
                }
            }
        }
        if self.directory.is_public(old.as_str())? {
            self.directory.set_public(new.as_str(), true).await?;
            self.directory.set_public(old.as_str(), false).await?;
        }

        // 5. The tombstone.
        let tombstone = json!({ "body": "This room has been replaced", "replacement_room": new });
        rooms.send(user, old, NewEvent::state(TimelineEventType::RoomTombstone, "", tombstone)).await?;

        // 6. The old room is closed to new messages and invites, if our power allows.
        if let Some(mut pl) = pl {
            let closed = level(&pl["users_default"]).unwrap_or(0).saturating_add(1).max(50);
            for key in ["events_default", "invite"] {
                if level(&pl[key]).unwrap_or(0) < closed {
                    pl[key] = json!(closed);
                }
            }
            if let Err(e) = rooms.send(user, old, NewEvent::state(TimelineEventType::RoomPowerLevels, "", pl)).await {
                tracing::info!(room_id = %old, error = %e, "could not restrict the old room's power levels");
            }
        }
        tracing::info!(old = %old, new = %new, "room upgraded");
        Ok(new)
    }
}
