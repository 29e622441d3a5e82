//! Fetching other servers' signing keys (Server-Server API §"Retrieving
//! server keys"): directly from the server (`GET /_matrix/key/v2/server`),
//! or, when that fails, through each configured notary in turn
//! (`POST /_matrix/key/v2/query`), accepting a notary's answer only when it
//! carries both the server's own signature and one of the notary's that we
//! can check. Keys are stored by the [`super::keyring::KeyRing`]; pinned
//! servers (`federation.trusted_keys`) are never looked up.

use http::{Method, StatusCode};
use serde_json::Value as JsonValue;

use super::FederationError;
use crate::Engine;

impl Engine {
    /// The verified public key `key_id` of `server`, fetching its key document if needed.
    pub async fn server_key(&self, server: &str, key_id: &str) -> Result<Option<String>, FederationError> {
        if let Some(key) = self.keyring.key(server, key_id, false)? {
            return Ok(Some(key));
        }
        if self.keyring.is_pinned(server) {
            // Pinned by configuration: an unknown key id is not looked up anywhere.
            return Ok(None);
        }
        self.refresh_keys(server).await?;
        self.keyring.key(server, key_id, false)
    }

    /// `server`'s key document: the stored one while valid, else fetched
    /// (directly, then through the configured notaries). What a notary serves.
    pub async fn key_document(&self, server: &str) -> Result<JsonValue, FederationError> {
        if let Some(doc) = self.keyring.document(server)? {
            return Ok(doc);
        }
        self.refresh_keys(server).await?;
        self.keyring.document(server)?.ok_or_else(|| FederationError::BadResponse {
            server: server.to_owned(),
            reason: "no valid key document".into(),
        })
    }

    /// Fetches and stores `server`'s keys: from the server itself, or failing
    /// that from each notary in `federation.notaries` in turn.
    async fn refresh_keys(&self, server: &str) -> Result<(), FederationError> {
        let direct = self.fetch_keys_direct(server).await;
        let Err(direct_error) = direct else { return Ok(()) };
        let mut reasons = vec![direct_error.to_string()];
        for notary in self.config.federation.notaries.iter().filter(|n| n.as_str() != server) {
            match self.fetch_keys_via_notary(notary, server).await {
                Ok(()) => {
                    tracing::info!(%server, %notary, "keys fetched through a notary");
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(%server, %notary, error = %e, "notary could not vouch for the keys");
                    reasons.push(format!("via {notary}: {e}"));
                }
            }
        }
        if reasons.len() == 1 {
            return Err(direct_error);
        }
        Err(FederationError::Unreachable(format!("{server}'s keys: {}", reasons.join("; "))))
    }

    async fn fetch_keys_direct(&self, server: &str) -> Result<(), FederationError> {
        let resp = self.remote(server).unsigned(Method::GET, "/_matrix/key/v2/server", None).await?;
        if resp.status != StatusCode::OK {
            return Err(FederationError::BadResponse {
                server: server.to_owned(),
                reason: format!("key request answered {}", resp.status),
            });
        }
        self.keyring.accept_document(server, &resp.json).await?;
        Ok(())
    }

    /// Asks `notary` for `server`'s keys; accepts a document signed by both.
    async fn fetch_keys_via_notary(&self, notary: &str, server: &str) -> Result<(), FederationError> {
        let fail = |reason: String| FederationError::BadResponse { server: notary.to_owned(), reason };
        // The notary's own keys: pinned, stored, or from the notary itself (never via notaries).
        if !self.keyring.is_pinned(notary) && self.keyring.document(notary)?.is_none() {
            self.fetch_keys_direct(notary).await?;
        }
        let body = serde_json::json!({ "server_keys": { server: {} } });
        let resp = self.remote(notary).unsigned(Method::POST, "/_matrix/key/v2/query", Some(&body)).await?;
        if resp.status != StatusCode::OK {
            return Err(fail(format!("key query answered {}", resp.status)));
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            server_keys: Vec<serde_json::Map<String, JsonValue>>,
        }
        let answer: Answer = resp.parse(notary)?;
        let doc = answer
            .server_keys
            .into_iter()
            .find(|d| d.get("server_name").and_then(JsonValue::as_str) == Some(server))
            .ok_or_else(|| fail(format!("no keys for {server}")))?;
        // The notary's signature, by any of its keys we trust.
        let signed_by = doc
            .get("signatures")
            .and_then(|s| s.get(notary))
            .and_then(JsonValue::as_object)
            .cloned()
            .unwrap_or_default();
        let mut set = ruma::signatures::PublicKeySet::new();
        for key_id in signed_by.keys() {
            if let Some(key) = self.keyring.key(notary, key_id, false)?
                && let Ok(key) = ruma::serde::Base64::parse(&key)
            {
                set.insert(key_id.clone(), key);
            }
        }
        if set.is_empty() {
            return Err(fail(format!("the answer for {server} carries no signature of {notary} we can check")));
        }
        // verify_json wants keys for every signer: the server's own, from the document
        // (accept_document checks that self-signature again on its own).
        let mut own = ruma::signatures::PublicKeySet::new();
        for (key_id, key) in doc.get("verify_keys").and_then(JsonValue::as_object).into_iter().flatten() {
            if let Some(k) = key.get("key").and_then(JsonValue::as_str).and_then(|k| ruma::serde::Base64::parse(k).ok())
            {
                own.insert(key_id.clone(), k);
            }
        }
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert(notary.to_owned(), set);
        map.insert(server.to_owned(), own);
        let doc = JsonValue::Object(doc);
        let object: ruma::CanonicalJsonObject =
            serde_json::from_value(doc.clone()).map_err(|e| fail(format!("not canonical JSON: {e}")))?;
        ruma::signatures::verify_json(&map, &object).map_err(|e| fail(format!("notary signature: {e}")))?;
        self.keyring.accept_document(server, &doc).await?;
        Ok(())
    }
}
