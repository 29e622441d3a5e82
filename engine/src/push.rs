//! Push rules (Client-Server API §"Push Rules"): each user's ruleset starts as
//! the server default (`Ruleset::server_default`) and is stored, once
//! changed, as the internal account data `m.push_rules`. Events are evaluated
//! with ruma's rule engine; the actions decide notification and highlight
//! counts in `/sync` and the `/notifications` list.

use ruma::{
    RoomId, UInt, UserId,
    push::{Action, PushConditionRoomCtx, Ruleset},
    serde::Raw,
};
use serde_json::Value as JsonValue;

use crate::{Engine, EngineError, rooms::ArcPdu};

/// The account-data type the ruleset is stored under.
pub const PUSH_RULES: &str = "m.push_rules";

/// How an event concerns a user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Counts as a notification.
    pub notify: bool,
    /// Counts as a highlight.
    pub highlight: bool,
    /// The `sound` tweak, for push gateways.
    pub sound: Option<String>,
}

impl Engine {
    /// The user's ruleset (server defaults until they change it).
    pub fn push_rules(&self, user: &UserId) -> Result<Ruleset, EngineError> {
        let stored = self.users.account_data(user.as_str(), None, PUSH_RULES)?;
        Ok(stored
            .and_then(|bytes| serde_json::from_slice::<JsonValue>(&bytes).ok())
            .and_then(|v| serde_json::from_value::<Ruleset>(v["global"].clone()).ok())
            .unwrap_or_else(|| Ruleset::server_default(user)))
    }

    /// Stores the user's ruleset.
    pub async fn set_push_rules(&self, user: &UserId, rules: &Ruleset) -> Result<(), EngineError> {
        let json =
            serde_json::to_vec(&serde_json::json!({ "global": rules })).map_err(EngineError::encode("push rules"))?;
        self.users.set_account_data(user.as_str(), None, PUSH_RULES, json).await.map_err(EngineError::from)
    }

    /// Evaluates `pdu` for `user` with their rules.
    pub async fn evaluate(
        &self,
        rules: &Ruleset,
        user: &UserId,
        room: &RoomId,
        members: usize,
        display_name: &str,
        pdu: &ArcPdu,
    ) -> Verdict {
        if pdu.sender == user {
            return Verdict::default();
        }
        let event = crate::events::client_event(pdu, true, 0);
        let Ok(raw) = serde_json::value::to_raw_value(&event) else { return Verdict::default() };
        let raw: Raw<JsonValue> = Raw::from_json(raw);
        let ctx = PushConditionRoomCtx::new(
            room.to_owned(),
            UInt::try_from(members as u64).unwrap_or(UInt::MAX),
            user.to_owned(),
            display_name.to_owned(),
        );
        let actions = rules.get_actions(&raw, &ctx).await;
        let sound = actions.iter().find_map(|a| match a {
            Action::SetTweak(ruma::push::Tweak::Sound(s)) => Some(s.as_str().to_owned()),
            _ => None,
        });
        Verdict {
            notify: actions.iter().any(Action::should_notify),
            highlight: actions.iter().any(Action::is_highlight),
            sound,
        }
    }
}
