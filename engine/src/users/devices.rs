//! Devices: each login makes one with its access token; listing, renaming and
//! logging out one or all of them.

use base64::Engine as _;
use myelin_storage::{Batch, Direction};
use ring::rand::SecureRandom;
use ruma::UserId;

use super::{DEVICES, Device, NewLogin, Session, TOKENS, UserError, Users, now_ms};
use crate::EngineError;

pub(super) fn random_token(bytes: usize) -> Result<String, UserError> {
    let mut raw = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| UserError::Engine(EngineError::Keys("no system randomness".into())))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

fn random_device_id() -> Result<String, UserError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut raw = [0u8; 10];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| UserError::Engine(EngineError::Keys("no system randomness".into())))?;
    Ok(raw.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect())
}

impl Users {
    pub(super) fn new_device(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: Option<String>,
        device_name: Option<String>,
    ) -> Result<NewLogin, UserError> {
        let device_id = match device_id {
            Some(d) if !d.is_empty() => d,
            _ => random_device_id()?,
        };
        let token = random_token(32)?;
        let key = (user_id.to_string(), device_id.clone());
        // Reusing a device id replaces that device's session.
        if let Some(old) = DEVICES.get(&*self.db, &key)? {
            TOKENS.delete(batch, &old.token);
        }
        DEVICES.put(
            batch,
            &key,
            &Device { display_name: device_name, last_seen_ts: now_ms(), token: token.clone() },
        )?;
        TOKENS.put(batch, &token, &Session { user_id: user_id.to_string(), device_id: device_id.clone() })?;
        Ok(NewLogin { user_id: user_id.to_owned(), device_id, access_token: token })
    }

    /// Logs out one device (its token stops working).
    pub async fn logout(&self, user_id: &str, device_id: &str) -> Result<(), UserError> {
        let mut batch = Batch::new();
        let key = (user_id.to_owned(), device_id.to_owned());
        if let Some(device) = DEVICES.get(&*self.db, &key)? {
            TOKENS.delete(&mut batch, &device.token);
        }
        DEVICES.delete(&mut batch, &key);
        self.commit_token_deletions(batch).await?;
        Ok(())
    }

    /// Logs out every device of the user.
    pub async fn logout_all(&self, user_id: &str) -> Result<(), UserError> {
        let mut batch = Batch::new();
        for row in DEVICES.prefix(&*self.db, &(user_id.to_owned(),), Direction::Forward)? {
            let (key, device) = row?;
            TOKENS.delete(&mut batch, &device.token);
            DEVICES.delete(&mut batch, &key);
        }
        self.commit_token_deletions(batch).await?;
        Ok(())
    }

    /// The user's devices.
    pub fn devices(&self, user_id: &str) -> Result<Vec<(String, Device)>, UserError> {
        let mut out = Vec::new();
        for row in DEVICES.prefix(&*self.db, &(user_id.to_owned(),), Direction::Forward)? {
            let ((_, device_id), device) = row?;
            out.push((device_id, device));
        }
        Ok(out)
    }

    /// One of the user's devices.
    pub fn device(&self, user_id: &str, device_id: &str) -> Result<Option<Device>, UserError> {
        Ok(DEVICES.get(&*self.db, &(user_id.to_owned(), device_id.to_owned()))?)
    }

    /// Renames a device.
    pub async fn rename_device(&self, user_id: &str, device_id: &str, name: Option<String>) -> Result<(), UserError> {
        let key = (user_id.to_owned(), device_id.to_owned());
        let mut device = DEVICES.get(&*self.db, &key)?.ok_or_else(|| UserError::NotFound("no such device".into()))?;
        device.display_name = name;
        let mut batch = Batch::new();
        DEVICES.put(&mut batch, &key, &device)?;
        self.db.commit(batch).await?;
        Ok(())
    }
}
