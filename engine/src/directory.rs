//! Local room aliases (Client-Server API §"Room aliases").
//!
//! `PUT /directory/room/{roomAlias}` maps an alias of this server to a room;
//! `GET` resolves it (with this server as the only one to join through);
//! `DELETE` removes it (its creator, or a user who may change the room's
//! canonical alias); `GET /rooms/{roomId}/aliases` lists a room's aliases.
//! Aliases of other servers resolve over federation (the federation issue).

use std::sync::Arc;

use myelin_storage::{Batch, Db, Direction, Stored, Table, catalog};
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// What an alias points to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AliasEntry {
    /// The room.
    pub room_id: String,
    /// Who created the alias.
    pub creator: String,
}
impl Stored for AliasEntry {}

const ALIASES: Table<String, AliasEntry> = Table::new(&catalog::ALIAS_ROOM);
const ROOM_ALIASES: Table<(String, String), ()> = Table::new(&catalog::ROOMALIAS_NONE);
const PUBLIC: Table<String, ()> = Table::new(&catalog::ROOMID_PUBLIC);

/// The alias directory of one server.
pub struct Directory {
    db: Arc<Db>,
    lock: tokio::sync::Mutex<()>,
}

impl Directory {
    /// The directory over `db`.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db, lock: tokio::sync::Mutex::new(()) }
    }

    /// What `alias` points to.
    pub fn resolve(&self, alias: &str) -> Result<Option<AliasEntry>, EngineError> {
        Ok(ALIASES.get(&*self.db, &alias.to_owned())?)
    }

    /// Creates `alias` → `room_id`; `Ok(false)` if the alias is taken.
    pub async fn create(&self, alias: &str, room_id: &str, creator: &str) -> Result<bool, EngineError> {
        let _guard = self.lock.lock().await;
        if ALIASES.contains(&*self.db, &alias.to_owned())? {
            return Ok(false);
        }
        let mut batch = Batch::new();
        self.stage_alias(&mut batch, alias, room_id, creator)?;
        self.db.commit(batch).await?;
        Ok(true)
    }

    /// Holds the alias lock, so an alias found free stays free until the
    /// holder's batch (see [`Directory::stage_alias`]) is handed over.
    pub async fn claim_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Writes `alias` → `room_id` into `batch`; the caller holds [`Directory::claim_lock`]
    /// and has checked that the alias is free.
    pub fn stage_alias(
        &self,
        batch: &mut Batch,
        alias: &str,
        room_id: &str,
        creator: &str,
    ) -> Result<(), myelin_storage::StorageError> {
        ALIASES.put(
            batch,
            &alias.to_owned(),
            &AliasEntry { room_id: room_id.to_owned(), creator: creator.to_owned() },
        )?;
        ROOM_ALIASES.put(batch, &(room_id.to_owned(), alias.to_owned()), &())?;
        Ok(())
    }

    /// Writes the publication of `room_id` into `batch`.
    pub fn stage_public(&self, batch: &mut Batch, room_id: &str) -> Result<(), myelin_storage::StorageError> {
        PUBLIC.put(batch, &room_id.to_owned(), &())
    }

    /// Removes `alias`; `Ok(false)` if it did not exist.
    pub async fn remove(&self, alias: &str) -> Result<bool, EngineError> {
        let _guard = self.lock.lock().await;
        let Some(entry) = ALIASES.get(&*self.db, &alias.to_owned())? else { return Ok(false) };
        let mut batch = Batch::new();
        ALIASES.delete(&mut batch, &alias.to_owned());
        ROOM_ALIASES.delete(&mut batch, &(entry.room_id, alias.to_owned()));
        self.db.commit(batch).await?;
        Ok(true)
    }

    /// The local aliases of a room.
    pub fn aliases_of(&self, room_id: &str) -> Result<Vec<String>, EngineError> {
        let mut out = Vec::new();
        for row in ROOM_ALIASES.prefix(&*self.db, &(room_id.to_owned(),), Direction::Forward)? {
            out.push(row?.0.1);
        }
        Ok(out)
    }

    /// Whether a room is published in the public room directory.
    pub fn is_public(&self, room_id: &str) -> Result<bool, EngineError> {
        Ok(PUBLIC.contains(&*self.db, &room_id.to_owned())?)
    }

    /// Publishes or unpublishes a room.
    pub async fn set_public(&self, room_id: &str, public: bool) -> Result<(), EngineError> {
        let mut batch = Batch::new();
        if public {
            PUBLIC.put(&mut batch, &room_id.to_owned(), &())?;
        } else {
            PUBLIC.delete(&mut batch, &room_id.to_owned());
        }
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Every published room id.
    pub fn public_rooms(&self) -> Result<Vec<String>, EngineError> {
        let mut out = Vec::new();
        for row in PUBLIC.iter(&*self.db, Direction::Forward)? {
            out.push(row?.0);
        }
        Ok(out)
    }
}
