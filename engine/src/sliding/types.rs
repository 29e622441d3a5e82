//! The wire types of simplified sliding sync (MSC4186): what a client asks, what it gets.
//!
//! Requests are read strictly: a field of the wrong type is a 400 at the API edge, not
//! a silent default. Unknown fields are ignored (clients send MSC fields we do not
//! serve, such as `room_name_like`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

/// The request body of `POST …/org.matrix.simplified_msc3575/sync`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Request {
    /// Names one of the device's connections (several may run side by side).
    #[serde(default)]
    pub conn_id: Option<String>,
    /// Echoed back in the response.
    #[serde(default)]
    pub txn_id: Option<String>,
    /// Sliding windows over the user's rooms, by list name.
    #[serde(default)]
    pub lists: BTreeMap<String, ListSpec>,
    /// Rooms the client wants whatever their place in a list.
    #[serde(default)]
    pub room_subscriptions: BTreeMap<ruma::OwnedRoomId, RoomSpec>,
    /// Extensions: to-device, end-to-end encryption, account data, receipts, typing.
    #[serde(default)]
    pub extensions: ExtensionsSpec,
}

/// One list: which rooms (ranges over the sorted, filtered rooms), and what of each.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListSpec {
    /// Inclusive index ranges into the list, e.g. `[[0, 19]]`.
    #[serde(default)]
    pub ranges: Vec<(u64, u64)>,
    /// What to send of each room in a range.
    #[serde(flatten)]
    pub room: RoomSpec,
    /// Which rooms the list holds.
    #[serde(default)]
    pub filters: Option<ListFilters>,
}

/// What to send of a room: its state by rules, and how much of its timeline.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RoomSpec {
    /// `[type, state_key]` rules; `*` matches any, and for `m.room.member` the state key
    /// may be `$LAZY` (senders of the timeline) or `$ME`.
    #[serde(default)]
    pub required_state: Vec<(String, String)>,
    /// Most timeline events to send.
    #[serde(default)]
    pub timeline_limit: u64,
    /// Accepted for clients of earlier drafts; heroes are always sent for unnamed rooms.
    #[serde(default)]
    pub include_heroes: Option<bool>,
}

/// Which rooms a list holds; absent filters match every room.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListFilters {
    /// Only rooms in (or not in) the user's `m.direct` account data.
    #[serde(default)]
    pub is_dm: Option<bool>,
    /// Only rooms with (or without) `m.room.encryption`.
    #[serde(default)]
    pub is_encrypted: Option<bool>,
    /// Only rooms the user is invited to (or not).
    #[serde(default)]
    pub is_invite: Option<bool>,
    /// Only children (`m.space.child`) of these spaces.
    #[serde(default)]
    pub spaces: Vec<ruma::OwnedRoomId>,
    /// Only rooms of these creation types (`null`: rooms without a type).
    #[serde(default)]
    pub room_types: Option<Vec<Option<String>>>,
    /// Never rooms of these creation types (`null`: rooms without a type).
    #[serde(default)]
    pub not_room_types: Vec<Option<String>>,
    /// Only rooms with one of these tags (`m.tag` room account data).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Never rooms with one of these tags.
    #[serde(default)]
    pub not_tags: Vec<String>,
}

/// The extensions a client asks for.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExtensionsSpec {
    /// Send-to-device messages for this device.
    #[serde(default)]
    pub to_device: Option<ToDeviceSpec>,
    /// Device-list changes and one-time key counts.
    #[serde(default)]
    pub e2ee: Option<Toggle>,
    /// Global and per-room account data.
    #[serde(default)]
    pub account_data: Option<Scoped>,
    /// Read receipts of the rooms in scope.
    #[serde(default)]
    pub receipts: Option<Scoped>,
    /// Typing notifications of the rooms in scope.
    #[serde(default)]
    pub typing: Option<Scoped>,
}

/// An extension that is only on or off.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Toggle {
    /// Whether the extension is wanted.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// The to-device extension: `since` is the `next_batch` of the previous answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ToDeviceSpec {
    /// Whether the extension is wanted.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Most messages per answer.
    #[serde(default)]
    pub limit: Option<u64>,
    /// Messages up to here were received and may be deleted.
    #[serde(default)]
    pub since: Option<String>,
}

/// A per-room extension, for the rooms of some lists and subscriptions (`*`: all).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Scoped {
    /// Whether the extension is wanted.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The lists whose rooms are in scope (absent: all).
    #[serde(default)]
    pub lists: Option<Vec<String>>,
    /// The subscribed rooms in scope (absent: all).
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
}

impl Scoped {
    /// Whether a room reached through `lists` (names) or a subscription is in scope.
    pub fn covers(&self, lists: &[&str], subscribed: bool, room_id: &str) -> bool {
        let by_list = match &self.lists {
            None => !lists.is_empty(),
            Some(names) => names.iter().any(|n| n == "*" || lists.contains(&n.as_str())),
        };
        let by_room = subscribed
            && match &self.rooms {
                None => true,
                Some(rooms) => rooms.iter().any(|r| r == "*" || r == room_id),
            };
        by_list || by_room
    }
}

/// The answer.
#[derive(Debug, Serialize)]
pub struct Response {
    /// The position to send next.
    pub pos: String,
    /// The request's `txn_id`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn_id: Option<String>,
    /// Per list: how many rooms it holds.
    pub lists: BTreeMap<String, ListOut>,
    /// Rooms with something to tell, by id.
    pub rooms: BTreeMap<String, RoomOut>,
    /// The extensions' answers.
    pub extensions: ExtensionsOut,
}

/// One list of the answer.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct ListOut {
    /// Rooms matching the list's filters.
    pub count: u64,
}

/// A room member shown for a room without a name.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct Hero {
    /// The member.
    pub user_id: String,
    /// Their display name in the room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    /// Their avatar in the room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

/// One room of the answer; empty parts are left out.
#[derive(Debug, Serialize, Default)]
pub struct RoomOut {
    /// The room's `m.room.name`, when first sent or changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The room's avatar when first sent or changed (`null`: removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<JsonValue>,
    /// Members to name an unnamed room by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heroes: Option<Vec<Hero>>,
    /// Whether this is the first time the connection sees the room.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub initial: bool,
    /// Whether the room is a direct chat of the user.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_dm: bool,
    /// Stripped state of an invite.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invite_state: Option<Vec<JsonValue>>,
    /// Stripped state of a knock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub knock_state: Option<Vec<JsonValue>>,
    /// State matching the `required_state` rules (changes only, after the first time).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub required_state: Vec<JsonValue>,
    /// Timeline events, oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<JsonValue>,
    /// A `/messages` token for the events before the timeline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prev_batch: Option<String>,
    /// Whether events were left out between the previous answer and this timeline.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub limited: bool,
    /// How many of the timeline's events are new since the previous answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_live: Option<u64>,
    /// Set when a larger `timeline_limit` made this timeline reach further back.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unstable_expanded_timeline: bool,
    /// Joined members.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_count: Option<u64>,
    /// Invited members.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invited_count: Option<u64>,
    /// Unread notifying events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notification_count: Option<u64>,
    /// Unread highlighting events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highlight_count: Option<u64>,
    /// The stream position the room sorts by (its newest event of a bumping type).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bump_stamp: Option<i64>,
}

/// The extensions of the answer; each only when asked for.
#[derive(Debug, Serialize, Default)]
pub struct ExtensionsOut {
    /// Send-to-device messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_device: Option<ToDeviceOut>,
    /// Device lists and key counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2ee: Option<E2eeOut>,
    /// Account data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_data: Option<AccountDataOut>,
    /// `m.receipt` events by room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipts: Option<RoomEventsOut>,
    /// `m.typing` events by room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typing: Option<RoomEventsOut>,
}

/// The to-device answer.
#[derive(Debug, Serialize)]
pub struct ToDeviceOut {
    /// Pass as `since` next time.
    pub next_batch: String,
    /// The messages.
    pub events: Vec<JsonValue>,
}

/// The e2ee answer.
#[derive(Debug, Serialize, Default)]
pub struct E2eeOut {
    /// Users whose devices changed, and users no longer sharing a room.
    pub device_lists: DeviceListsOut,
    /// Unclaimed one-time keys of this device, by algorithm.
    pub device_one_time_keys_count: JsonValue,
    /// Algorithms of this device's unused fallback keys.
    pub device_unused_fallback_key_types: JsonValue,
}

/// `device_lists` of the e2ee answer.
#[derive(Debug, Serialize, Default)]
pub struct DeviceListsOut {
    /// Users whose device lists changed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// Users who no longer share a room with the user.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<String>,
}

/// The account-data answer.
#[derive(Debug, Serialize, Default)]
pub struct AccountDataOut {
    /// Global account data events.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub global: Vec<JsonValue>,
    /// Per-room account data events.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rooms: BTreeMap<String, Vec<JsonValue>>,
}

/// One ephemeral event per room.
#[derive(Debug, Serialize, Default)]
pub struct RoomEventsOut {
    /// The events, by room.
    pub rooms: BTreeMap<String, JsonValue>,
}
