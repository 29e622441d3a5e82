//! Room creation: the sequence of events `POST /createRoom` produces.
//!
//! Client-Server API §"Creation": "The server MUST create the following
//! events: the m.room.create event itself; an m.room.member event for the
//! creator to join the room; a default m.room.power_levels event, overridden
//! by power_level_content_override; an m.room.canonical_alias event if
//! room_alias_name is given; events set by the preset (m.room.join_rules,
//! m.room.history_visibility, m.room.guest_access); events listed in
//! initial_state; m.room.name and m.room.topic if given; invite membership
//! events." Presets: `private_chat`, `trusted_private_chat` (invitees get
//! the creator's power), `public_chat`.
//!
//! Room version 12: the room id is derived from the create event, and
//! creators have unlimited power, so they are not listed in `users` of the
//! power levels (the version's auth rules reject that).
//!
//! All of a creation's events, and the caller's alias and directory rows, are
//! one write batch (issue #22 §3): a room exists with all its initial state or
//! not at all.

use ruma::{
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId, events::TimelineEventType,
    room_version_rules::RoomIdFormatVersion,
};
use serde_json::{Value as JsonValue, json};

use myelin_storage::Batch;

use super::{Before, Head, NewEvent, Pdu, RoomError, Rooms, StateRef, version};

/// `preset` of `/createRoom`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Invite-only, shared history, guests may join.
    PrivateChat,
    /// Like private, and every invitee gets the creator's power.
    TrustedPrivateChat,
    /// Anyone may join, shared history, no guests.
    PublicChat,
}

/// Everything `/createRoom` can ask for that the engine acts on.
#[derive(Debug, Clone, Default)]
pub struct CreateRoom {
    /// `room_version`; default [`version::DEFAULT`].
    pub version: Option<RoomVersionId>,
    /// `preset`; default from visibility (public → public_chat, else private_chat).
    pub preset: Option<Preset>,
    /// `visibility` was `public`.
    pub public: bool,
    /// `name`.
    pub name: Option<String>,
    /// `topic`.
    pub topic: Option<String>,
    /// The full alias from `room_alias_name` (set as canonical alias).
    pub alias: Option<OwnedRoomAliasId>,
    /// `invite`.
    pub invite: Vec<OwnedUserId>,
    /// `is_direct`.
    pub is_direct: bool,
    /// `initial_state`: state events to add.
    pub initial_state: Vec<NewEvent>,
    /// `power_level_content_override`, merged over the defaults (top-level keys replaced).
    pub power_level_content_override: Option<JsonValue>,
    /// `creation_content`, merged into the create event's content.
    pub creation_content: Option<JsonValue>,
    /// Extra content of the creator's join (display name, avatar).
    pub creator_profile: Option<JsonValue>,
}

/// 18 random letters: the localpart of a v1 room id or event id.
pub fn random_localpart() -> Result<String, RoomError> {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut raw = [0u8; 18];
    ring::rand::SystemRandom::new().fill(&mut raw).map_err(|_| RoomError::BadEvent("no randomness".into()))?;
    Ok(raw.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect())
}

impl Rooms {
    /// Creates a room for local user `creator`; returns its id.
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId, RoomError> {
        self.create_room_with(creator, req, |_, _| Ok(())).await
    }

    /// [`Rooms::create_room`], with `with` adding rows that are written with
    /// the room or not at all (its alias, its directory entry). Every initial
    /// event goes into one batch: a creation that fails part way (an
    /// `initial_state` event the rules refuse, a full disk, a crash) leaves no
    /// room behind, never a room with half its state.
    pub async fn create_room_with(
        &self,
        creator: &UserId,
        req: CreateRoom,
        with: impl FnOnce(&RoomId, &mut Batch) -> Result<(), RoomError>,
    ) -> Result<OwnedRoomId, RoomError> {
        let version = req.version.clone().unwrap_or(version::DEFAULT);
        let rules = version::check_creatable(&version)?;
        if creator.server_name() != self.server_name {
            return Err(RoomError::Forbidden(format!("{creator} is not a user of this server")));
        }
        let provisional = if rules.room_id_format == RoomIdFormatVersion::V1 {
            RoomId::parse(format!("!{}:{}", random_localpart()?, self.server_name))
                .map_err(|e| RoomError::BadEvent(e.to_string()))?
        } else {
            // Replaced by the id derived from the create event below.
            RoomId::parse(format!("!{}", random_localpart()?)).map_err(|e| RoomError::BadEvent(e.to_string()))?
        };
        let mut head = Head {
            room_id: provisional,
            short: 0,
            version: version.clone(),
            rules: rules.clone(),
            extremities: Vec::new(),
            depth: 0,
            state: 0,
            servers: Default::default(),
        };

        // 1. m.room.create
        let mut create_content = match req.creation_content.clone() {
            Some(JsonValue::Object(map)) => map,
            Some(_) => return Err(RoomError::BadEvent("creation_content must be an object".into())),
            None => Default::default(),
        };
        create_content.insert("room_version".into(), json!(version.as_str()));
        if rules.authorization.use_room_create_sender {
            create_content.remove("creator");
        } else {
            create_content.insert("creator".into(), json!(creator.as_str()));
        }
        let create = NewEvent::state(TimelineEventType::RoomCreate, "", JsonValue::Object(create_content));
        // From v12 the room id is the create event's hash: the same creator creating two
        // rooms with the same content in the same millisecond would get one id. A later
        // millisecond gives another event, so another room.
        let mut attempts = 0;
        let (pdu, room_id, mut guard) = loop {
            let pdu = self.build(&head, creator, &create, Vec::new(), &StateRef::Empty)?;
            let room_id = pdu.room_id.clone();
            let guard = self.lock_of(&room_id).lock_owned().await;
            if guard.is_none() && self.short_room(&room_id)?.is_none() {
                break (pdu, room_id, guard);
            }
            attempts += 1;
            if attempts >= 20 || rules.room_id_format == RoomIdFormatVersion::V1 {
                return Err(RoomError::InUse(format!("room {room_id} exists")));
            }
            drop(guard);
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        };
        head.room_id = room_id.clone();
        let mut batch = Batch::new();
        let mut staged = Vec::new();
        let built = self.stage_creation(&mut batch, &mut head, creator, &req, pdu, &mut staged);
        let submitted = built.and_then(|()| with(&room_id, &mut batch)).and_then(|()| {
            // The rooms of many creations can share one disk sync.
            self.db.submit_pending(batch).map_err(RoomError::from)
        });
        let pending = match submitted {
            Ok(pending) => pending,
            Err(e) => {
                // Nothing was handed over: no trace of the room stays in memory either.
                self.unstage(&staged);
                self.versions.lock().remove(&head.short);
                return Err(e);
            }
        };
        *guard = Some(head);
        drop(guard);
        // Every initial event durable before the room is announced.
        self.settle(&room_id, pending).await?;
        tracing::info!(room_id = %room_id, version = %version, creator = %creator, "room created");
        Ok(room_id)
    }

    /// Stages the create event and the creation's other initial events on `head`.
    fn stage_creation(
        &self,
        batch: &mut Batch,
        head: &mut Head,
        creator: &UserId,
        req: &CreateRoom,
        create: Pdu,
        staged: &mut Vec<u64>,
    ) -> Result<(), RoomError> {
        let first = self.stage(batch, head, create, Before::FromPrevs, None)?;
        staged.push(first.short);
        self.apply(head, first);

        let preset = req.preset.unwrap_or(if req.public { Preset::PublicChat } else { Preset::PrivateChat });
        let mut events = Vec::new();
        // 2. The creator joins.
        let mut join = json!({ "membership": "join" });
        if let (Some(JsonValue::Object(extra)), Some(obj)) = (&req.creator_profile, join.as_object_mut()) {
            for (k, v) in extra {
                if k != "membership" {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
        events.push(NewEvent::state(TimelineEventType::RoomMember, creator.as_str(), join));
        // 3. Power levels.
        events.push(NewEvent::state(
            TimelineEventType::RoomPowerLevels,
            "",
            self.default_power_levels(
                creator,
                req,
                preset,
                head.rules.authorization.explicitly_privilege_room_creators,
            ),
        ));
        // 4. Canonical alias.
        if let Some(alias) = &req.alias {
            events.push(NewEvent::state(TimelineEventType::RoomCanonicalAlias, "", json!({ "alias": alias })));
        }
        // 5. Preset events.
        let (join_rule, guest) = match preset {
            Preset::PublicChat => ("public", "forbidden"),
            Preset::PrivateChat | Preset::TrustedPrivateChat => ("invite", "can_join"),
        };
        events.push(NewEvent::state(TimelineEventType::RoomJoinRules, "", json!({ "join_rule": join_rule })));
        events.push(NewEvent::state(
            TimelineEventType::RoomHistoryVisibility,
            "",
            json!({ "history_visibility": "shared" }),
        ));
        events.push(NewEvent::state(TimelineEventType::RoomGuestAccess, "", json!({ "guest_access": guest })));
        // 6. initial_state (the dedicated fields below win over it).
        events.extend(req.initial_state.iter().cloned());
        // 7./8. Name and topic.
        if let Some(name) = &req.name {
            events.push(NewEvent::state(TimelineEventType::RoomName, "", json!({ "name": name })));
        }
        if let Some(topic) = &req.topic {
            events.push(NewEvent::state(TimelineEventType::RoomTopic, "", json!({ "topic": topic })));
        }
        // 9. Invites.
        for invitee in &req.invite {
            let mut content = json!({ "membership": "invite" });
            if req.is_direct {
                content["is_direct"] = json!(true);
            }
            events.push(NewEvent::state(TimelineEventType::RoomMember, invitee.as_str(), content));
        }
        for event in events {
            if event.state_key.is_none() {
                return Err(RoomError::BadEvent(format!("initial_state event {} has no state_key", event.kind)));
            }
            let prev = head.extremities.iter().map(|(_, id)| id.clone()).collect();
            let state = StateRef::Stored(head.state);
            let pdu = self.build(head, creator, &event, prev, &state)?;
            let next = self.stage(batch, head, pdu, Before::FromPrevs, None)?;
            staged.push(next.short);
            self.apply(head, next);
        }
        Ok(())
    }

    fn default_power_levels(
        &self,
        creator: &UserId,
        req: &CreateRoom,
        preset: Preset,
        creators_privileged: bool,
    ) -> JsonValue {
        let mut users = serde_json::Map::new();
        if !creators_privileged {
            users.insert(creator.to_string(), json!(100));
        }
        if preset == Preset::TrustedPrivateChat {
            for invitee in &req.invite {
                users.insert(invitee.to_string(), json!(100));
            }
        }
        let mut pl = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": if preset == Preset::PublicChat { 50 } else { 0 },
            "notifications": { "room": 50 },
        });
        if let (Some(JsonValue::Object(over)), JsonValue::Object(base)) = (&req.power_level_content_override, &mut pl) {
            for (k, v) in over {
                base.insert(k.clone(), v.clone());
            }
        }
        pl
    }
}
