//! Cross-signing keys and signatures (Client-Server API §"Cross-signing":
//! `/keys/device_signing/upload`, `/keys/signatures/upload`): a user's
//! master, self-signing and user-signing keys, signatures merged onto stored
//! device and cross-signing keys, and local users' signatures on other
//! servers' users' keys.

use myelin_storage::{Batch, Direction, Raw, Table, catalog};
use serde_json::{Map, Value as JsonValue};

use super::{CROSS_SIGNING, DEVICE_KEYS, E2ee, E2eeError, USAGES, parse, to_bytes};

const FOREIGN_SIGNATURES: Table<(String, String, String), Raw> = Table::new(&catalog::USERKEYSIGNER_SIGNATURES);

/// A JSON object without its `signatures` and `unsigned` members: what a signature covers.
fn signed_part(v: &JsonValue) -> JsonValue {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("signatures");
        o.remove("unsigned");
    }
    v
}

impl E2ee {
    /// A user's cross-signing key of `usage` (`master`, `self_signing`, `user_signing`).
    pub fn cross_signing_key(&self, user: &str, usage: &str) -> Result<Option<JsonValue>, E2eeError> {
        Ok(CROSS_SIGNING.get(&*self.db, &(user.to_owned(), usage.to_owned()))?.and_then(|r| parse(&r.0)))
    }

    /// Replaces cross-signing keys of a user; returns whether any changed.
    pub async fn set_cross_signing(&self, user: &str, keys: &[(&str, JsonValue)]) -> Result<bool, E2eeError> {
        let mut batch = Batch::new();
        let mut changed = false;
        for (usage, key) in keys {
            if !USAGES.contains(usage) {
                return Err(E2eeError::Invalid(format!("unknown key usage {usage}")));
            }
            if key["user_id"].as_str() != Some(user) || !key["keys"].is_object() {
                return Err(E2eeError::Invalid(format!("the {usage} key must name this user and carry `keys`")));
            }
            if self.cross_signing_key(user, usage)?.as_ref() != Some(key) {
                CROSS_SIGNING.put(&mut batch, &(user.to_owned(), (*usage).to_owned()), &Raw(to_bytes(key)?))?;
                changed = true;
            }
        }
        if changed {
            self.log_change(&mut batch, user)?;
            self.db.commit(batch).await?;
        }
        Ok(changed)
    }

    /// Merges `signer`'s signatures on `target`'s device or cross-signing key `key_id`.
    ///
    /// The object must be the stored one (apart from signatures); only
    /// signatures made by `signer` are taken. Returns whether anything changed.
    pub async fn add_signatures(
        &self,
        signer: &str,
        target: &str,
        key_id: &str,
        signed: &JsonValue,
    ) -> Result<bool, E2eeError> {
        let new_sigs = signed["signatures"][signer]
            .as_object()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| E2eeError::Invalid(format!("no signatures by {signer}")))?;
        // Which stored object: a device of the target, or one of its cross-signing keys.
        let device_row = (target.to_owned(), key_id.to_owned());
        let (stored, cross_row) = if let Some(Raw(bytes)) = DEVICE_KEYS.get(&*self.db, &device_row)? {
            (parse(&bytes).ok_or_else(|| E2eeError::Invalid("stored device keys unreadable".into()))?, None)
        } else {
            let mut found = None;
            for usage in USAGES {
                if let Some(key) = self.cross_signing_key(target, usage)?
                    && key["keys"].as_object().is_some_and(|k| {
                        k.iter().any(|(id, public)| {
                            public.as_str() == Some(key_id) || id.split_once(':').map(|(_, p)| p) == Some(key_id)
                        })
                    })
                {
                    found = Some((key, (target.to_owned(), usage.to_owned())));
                    break;
                }
            }
            let (key, row) = found.ok_or_else(|| E2eeError::Invalid(format!("unknown key {key_id}")))?;
            (key, Some(row))
        };
        if signed_part(&stored) != signed_part(signed) {
            return Err(E2eeError::Invalid(format!("key {key_id} does not match the stored key")));
        }
        let mut merged = stored.clone();
        let slot = merged
            .as_object_mut()
            .ok_or_else(|| E2eeError::Invalid("stored key is not an object".into()))?
            .entry("signatures")
            .or_insert_with(|| JsonValue::Object(Map::new()));
        if !slot.is_object() {
            *slot = JsonValue::Object(Map::new());
        }
        let by_signer = slot
            .as_object_mut()
            .ok_or_else(|| E2eeError::Invalid("signatures is not an object".into()))?
            .entry(signer.to_owned())
            .or_insert_with(|| JsonValue::Object(Map::new()));
        if let Some(map) = by_signer.as_object_mut() {
            for (id, sig) in new_sigs {
                map.insert(id.clone(), sig.clone());
            }
        }
        if merged == stored {
            return Ok(false);
        }
        let mut batch = Batch::new();
        match &cross_row {
            Some(row) => CROSS_SIGNING.put(&mut batch, row, &Raw(to_bytes(&merged)?))?,
            None => DEVICE_KEYS.put(&mut batch, &device_row, &Raw(to_bytes(&merged)?))?,
        }
        self.log_change(&mut batch, target)?;
        self.db.commit(batch).await?;
        Ok(true)
    }

    /// Keeps a local user's signatures on another server's user's key (a master key
    /// verified with the signer's user-signing key, say). They stay here: they are
    /// merged into that key whenever it is served from this server.
    pub async fn add_foreign_signatures(
        &self,
        signer: &str,
        target: &str,
        key_id: &str,
        signed: &JsonValue,
    ) -> Result<(), E2eeError> {
        let sigs = signed["signatures"][signer]
            .as_object()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| E2eeError::Invalid(format!("no signatures by {signer}")))?;
        let row = (target.to_owned(), key_id.to_owned(), signer.to_owned());
        let mut merged = FOREIGN_SIGNATURES.get(&*self.db, &row)?.and_then(|r| parse(&r.0)).unwrap_or(JsonValue::Null);
        if !merged.is_object() {
            merged = JsonValue::Object(Map::new());
        }
        if let Some(m) = merged.as_object_mut() {
            for (id, sig) in sigs {
                m.insert(id.clone(), sig.clone());
            }
        }
        let mut batch = Batch::new();
        FOREIGN_SIGNATURES.put(&mut batch, &row, &Raw(to_bytes(&merged)?))?;
        self.log_change(&mut batch, target)?;
        self.db.commit(batch).await?;
        Ok(())
    }

    /// Adds the signatures local users made on `target`'s key `key_id` to `key`.
    pub fn merge_foreign_signatures(&self, target: &str, key_id: &str, key: &mut JsonValue) -> Result<(), E2eeError> {
        for row in FOREIGN_SIGNATURES.prefix(&*self.db, &(target.to_owned(), key_id.to_owned()), Direction::Forward)? {
            let ((_, _, signer), Raw(bytes)) = row?;
            let Some(JsonValue::Object(sigs)) = parse(&bytes) else { continue };
            let Some(obj) = key.as_object_mut() else { return Ok(()) };
            let all = obj.entry("signatures").or_insert_with(|| JsonValue::Object(Map::new()));
            if let Some(all) = all.as_object_mut() {
                let mine = all.entry(signer).or_insert_with(|| JsonValue::Object(Map::new()));
                if let Some(mine) = mine.as_object_mut() {
                    mine.extend(sigs);
                }
            }
        }
        Ok(())
    }
}
