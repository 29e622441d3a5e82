//! Which servers we federate with: the configured `federation.allow` /
//! `federation.deny` lists plus entries an operator adds at runtime
//! (`myelin admin federation allow|deny|remove|list`), persisted so they
//! survive restarts.
//!
//! A server is allowed when federation is enabled, it is on neither deny
//! list, and either both allow lists are empty or it is on one of them.
//! Runtime entries live in memory behind a lock for the hot path (every
//! inbound and outbound request) and in RocksDB for durability.

use std::{collections::BTreeMap, sync::Arc};

use myelin_storage::{Batch, Db, Direction, Table, catalog};
use parking_lot::RwLock;

use crate::{EngineError, config::FederationConfig};

/// A runtime list entry: `"allow"` or `"deny"`.
const POLICY: Table<String, String> = Table::new(&catalog::SERVERNAME_POLICY);

/// One runtime or configured list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// Federate only with listed servers (when any are listed).
    Allow,
    /// Never federate with listed servers.
    Deny,
}

impl List {
    fn as_str(self) -> &'static str {
        match self {
            List::Allow => "allow",
            List::Deny => "deny",
        }
    }
}

/// The federation allow/deny policy.
pub struct Policy {
    db: Arc<Db>,
    enabled: bool,
    /// `federation.allow` and `.deny` of the configuration file, replaced when
    /// the server re-reads it (SIGHUP).
    configured: RwLock<Configured>,
    runtime: RwLock<BTreeMap<String, List>>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Configured {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl Policy {
    /// Loads the runtime entries stored in `db` on top of the configured lists.
    pub fn load(db: Arc<Db>, config: &FederationConfig) -> Result<Self, EngineError> {
        let mut runtime = BTreeMap::new();
        for item in POLICY.iter(&*db, Direction::Forward)? {
            let (server, list) = item?;
            let list = if list == "deny" { List::Deny } else { List::Allow };
            runtime.insert(server, list);
        }
        Ok(Self {
            db,
            enabled: config.enabled,
            configured: RwLock::new(Configured { allow: config.allow.clone(), deny: config.deny.clone() }),
            runtime: RwLock::new(runtime),
        })
    }

    /// Whether we may talk to `server`, in either direction.
    pub fn allows(&self, server: &str) -> bool {
        if !self.enabled {
            return false;
        }
        let configured = self.configured.read();
        let runtime = self.runtime.read();
        if configured.deny.iter().any(|d| d == server) || runtime.get(server) == Some(&List::Deny) {
            return false;
        }
        let any_allow = !configured.allow.is_empty() || runtime.values().any(|l| *l == List::Allow);
        !any_allow || configured.allow.iter().any(|a| a == server) || runtime.get(server) == Some(&List::Allow)
    }

    /// Replaces the configured lists with those of a re-read configuration
    /// file; true when they changed. Runtime entries stay as they are.
    pub fn set_configured(&self, config: &FederationConfig) -> bool {
        let new = Configured { allow: config.allow.clone(), deny: config.deny.clone() };
        let mut configured = self.configured.write();
        if *configured == new {
            return false;
        }
        *configured = new;
        true
    }

    /// Puts `server` on a runtime list (replacing any runtime entry for it).
    pub async fn set(&self, server: &str, list: List) -> Result<(), EngineError> {
        let mut batch = Batch::new();
        POLICY.put(&mut batch, &server.to_owned(), &list.as_str().to_owned())?;
        self.db.commit(batch).await?;
        self.runtime.write().insert(server.to_owned(), list);
        Ok(())
    }

    /// Removes `server`'s runtime entry; false when it had none.
    pub async fn remove(&self, server: &str) -> Result<bool, EngineError> {
        if !self.runtime.read().contains_key(server) {
            return Ok(false);
        }
        let mut batch = Batch::new();
        POLICY.delete(&mut batch, &server.to_owned());
        self.db.commit(batch).await?;
        self.runtime.write().remove(server);
        Ok(true)
    }

    /// Every entry: (server, list, source) with source `"config"` or `"runtime"`.
    pub fn list(&self) -> Vec<(String, &'static str, &'static str)> {
        let configured = self.configured.read();
        let mut out: Vec<_> = configured
            .allow
            .iter()
            .map(|s| (s.clone(), "allow", "config"))
            .chain(configured.deny.iter().map(|s| (s.clone(), "deny", "config")))
            .collect();
        out.extend(self.runtime.read().iter().map(|(s, l)| (s.clone(), l.as_str(), "runtime")));
        out
    }
}

#[cfg(test)]
mod tests {
    use myelin_storage::StorageOptions;

    use super::*;

    fn open(dir: &std::path::Path) -> Arc<Db> {
        Db::open(&dir.join("db"), &StorageOptions { cache_bytes: 8 << 20, ..Default::default() }).unwrap()
    }

    #[tokio::test]
    async fn runtime_entries_combine_with_the_config_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let config = FederationConfig { deny: vec!["evil.test".into()], ..FederationConfig::default() };
        let db = open(dir.path());
        let policy = Policy::load(db.clone(), &config).unwrap();
        assert!(policy.allows("a.test") && !policy.allows("evil.test"));

        policy.set("b.test", List::Deny).await.unwrap();
        assert!(!policy.allows("b.test"));
        // One allow entry turns the allow list on: everyone else is out.
        policy.set("a.test", List::Allow).await.unwrap();
        assert!(policy.allows("a.test") && !policy.allows("c.test"));
        assert!(!policy.remove("c.test").await.unwrap());
        assert!(policy.remove("a.test").await.unwrap());
        assert!(policy.allows("c.test"));
        drop(policy);
        db.shutdown();
        drop(db);

        let policy = Policy::load(open(dir.path()), &config).unwrap();
        assert!(!policy.allows("b.test"), "the runtime deny survived the reopen");
        assert!(!policy.allows("evil.test") && policy.allows("c.test"));
        assert_eq!(policy.list().len(), 2);

        let off =
            Policy::load(open(&dir.path().join("other")), &FederationConfig { enabled: false, ..config }).unwrap();
        assert!(!off.allows("a.test"), "federation disabled allows nobody");
    }
}
