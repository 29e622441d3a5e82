//! Creating a room as a client asks for it (Client-Server API §"Creation",
//! `POST /createRoom`): the alias claim, the room itself, the directory entry
//! and the invites to users of other servers.
//!
//! > The server MUST ... create the room, ... set the alias, ... invite the
//! > users in `invite` ... If the alias is already in use, `M_ROOM_IN_USE`.
//!
//! [`Rooms::create_room`](crate::rooms::Rooms::create_room) writes the room's
//! events; this module does everything around them, so the HTTP handler only
//! reads the request and writes the answer.

use std::sync::Arc;

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, UserId};
use serde_json::json;

use crate::{Engine, EngineError, appservice::Appservice, rooms::CreateRoom};

/// Why a room alias cannot be claimed, or a room not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateRoomError {
    /// `room_alias_name` does not make a valid alias (`M_INVALID_PARAM`).
    #[error("room alias: {0}")]
    InvalidAlias(String),
    /// An appservice's exclusive namespace covers the alias (`M_EXCLUSIVE`).
    #[error("{0}")]
    Exclusive(String),
    /// The alias points at another room (`M_ROOM_IN_USE`).
    #[error("{0} is taken")]
    AliasInUse(OwnedRoomAliasId),
    /// `initial_state` holds an event it may not (`M_INVALID_PARAM`).
    #[error("{0}")]
    BadInitialState(&'static str),
    /// Anything else.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<crate::rooms::RoomError> for CreateRoomError {
    fn from(e: crate::rooms::RoomError) -> Self {
        CreateRoomError::Engine(e.into())
    }
}

impl From<crate::users::UserError> for CreateRoomError {
    fn from(e: crate::users::UserError) -> Self {
        CreateRoomError::Engine(e.into())
    }
}

impl From<myelin_storage::StorageError> for CreateRoomError {
    fn from(e: myelin_storage::StorageError) -> Self {
        CreateRoomError::Engine(e.into())
    }
}

/// A `createRoom` request, read and checked for shape by the API.
#[derive(Debug)]
pub struct RoomCreation {
    /// The room's events. Its `invite` may name users of any server; its
    /// `alias` and `creator_profile` are filled in here.
    pub room: CreateRoom,
    /// `room_alias_name`: the localpart of an alias on this server.
    pub alias_name: Option<String>,
}

impl Engine {
    /// Whether the caller (`appservice`, if it acts through one) may claim
    /// `alias`: appservices only inside their namespaces, and nobody inside
    /// another appservice's exclusive namespace.
    pub fn check_alias_claim(
        &self,
        appservice: Option<&Arc<Appservice>>,
        alias: &RoomAliasId,
    ) -> Result<(), CreateRoomError> {
        if let Some(a) = appservice
            && !a.owns_alias(alias.as_str())
        {
            return Err(CreateRoomError::Exclusive(format!(
                "{alias} is not in the namespaces of the appservice `{}`",
                a.id()
            )));
        }
        if let Some(claimant) = self.appservices.claimant_of_alias(alias.as_str())
            && appservice.map(|a| a.id()) != Some(claimant.id())
        {
            return Err(CreateRoomError::Exclusive(format!(
                "{alias} is reserved by the appservice `{}`",
                claimant.id()
            )));
        }
        Ok(())
    }

    /// Creates a room for local user `creator`, then publishes it, gives it its
    /// alias and invites the users of other servers through their servers.
    pub async fn create_room_as(
        &self,
        creator: &UserId,
        appservice: Option<&Arc<Appservice>>,
        request: RoomCreation,
    ) -> Result<OwnedRoomId, CreateRoomError> {
        let RoomCreation { mut room, alias_name } = request;
        let alias = match alias_name {
            Some(name) => {
                let alias = RoomAliasId::parse(format!("#{name}:{}", self.server_name))
                    .map_err(|e| CreateRoomError::InvalidAlias(e.to_string()))?;
                self.check_alias_claim(appservice, &alias)?;
                if self.directory.resolve(alias.as_str())?.is_some() {
                    return Err(CreateRoomError::AliasInUse(alias));
                }
                Some(alias)
            }
            None => None,
        };
        if room.initial_state.iter().any(|e| matches!(e.kind.to_string().as_str(), "m.room.create" | "m.room.member")) {
            return Err(CreateRoomError::BadInitialState(
                "initial_state may not contain m.room.create or m.room.member events",
            ));
        }
        // Users of other servers are invited after creation, each through their server.
        let (local, remote): (Vec<OwnedUserId>, Vec<OwnedUserId>) =
            std::mem::take(&mut room.invite).into_iter().partition(|u| u.server_name() == self.server_name);
        room.invite = local;
        room.alias = alias.clone();
        room.creator_profile = self.users.profile(creator.as_str())?.map(|p| {
            let mut extra = serde_json::Map::new();
            if let Some(d) = p.displayname {
                extra.insert("displayname".into(), json!(d));
            }
            if let Some(a) = p.avatar_url {
                extra.insert("avatar_url".into(), json!(a));
            }
            serde_json::Value::Object(extra)
        });
        let (publish, is_direct) = (room.public, room.is_direct);
        // The alias stays free from this check until the room (with it) is written.
        let claim = match &alias {
            Some(alias) => {
                let guard = self.directory.claim_lock().await;
                if self.directory.resolve(alias.as_str())?.is_some() {
                    return Err(CreateRoomError::AliasInUse(alias.clone()));
                }
                Some(guard)
            }
            None => None,
        };
        let directory = &self.directory;
        let room_id = self
            .rooms
            .create_room_with(creator, room, |room_id, batch| {
                if publish {
                    directory.stage_public(batch, room_id.as_str())?;
                }
                if let Some(alias) = &alias {
                    directory.stage_alias(batch, alias.as_str(), room_id.as_str(), creator.as_str())?;
                }
                Ok(())
            })
            .await?;
        drop(claim);
        for invitee in &remote {
            let mut content = json!({ "membership": "invite" });
            if is_direct {
                content["is_direct"] = json!(true);
            }
            // The room exists now: a failed remote invite is reported in the log, not as a
            // failed creation (the client can invite again).
            if let Err(e) =
                crate::federation::membership::invite_remote(self, creator, &room_id, invitee, content).await
            {
                tracing::warn!(room_id = %room_id, invitee = %invitee, error = %e, "invite during room creation failed");
            }
        }
        Ok(room_id)
    }
}
