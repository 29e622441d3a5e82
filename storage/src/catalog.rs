//! The catalog: every column family Myelin stores, with its tuning.
//!
//! One place lists them all, so a reader sees the whole storage layout here.
//! Names follow `<key>_<value>`. Families missing from an existing database are
//! created on open; a family is never renamed in place (bump the schema).
//!
//! Tuning classes:
//! - [`Access::Point`]: looked up by exact key (id maps, metadata). Bloom filters,
//!   small blocks, a large block-cache share.
//! - [`Access::Scan`]: read in key order (timelines, queues, state chains).
//!   Larger blocks, no bloom filter, smaller cache share.
//! - [`Compression`]: lz4 for hot, small rows; zstd for bulky, write-once
//!   rows (PDU JSON) where disk bytes matter more than CPU.

/// How a family is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Exact-key lookups.
    Point,
    /// Ordered range and prefix scans.
    Scan,
}

/// Block compression of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Fast, light compression.
    Lz4,
    /// Denser compression for bulky rows.
    Zstd,
}

/// One column family and its tuning.
#[derive(Debug)]
pub struct Cf {
    /// The RocksDB family name.
    pub name: &'static str,
    /// Dominant access pattern.
    pub access: Access,
    /// Block compression.
    pub compression: Compression,
    /// Share of the block cache, in percent of the configured total.
    pub cache_percent: u8,
}

const fn point(name: &'static str, cache_percent: u8) -> Cf {
    Cf { name, access: Access::Point, compression: Compression::Lz4, cache_percent }
}

const fn scan(name: &'static str, cache_percent: u8) -> Cf {
    Cf { name, access: Access::Scan, compression: Compression::Lz4, cache_percent }
}

/// Database-wide singletons: schema identity, persisted counters.
pub static GLOBAL: Cf = point("global", 1);

/// Event id → short event id.
pub static EVENTID_SHORTEVENTID: Cf = point("eventid_shorteventid", 8);
/// Short event id → event id.
pub static SHORTEVENTID_EVENTID: Cf = point("shorteventid_eventid", 8);
/// Room id → short room id.
pub static ROOMID_SHORTROOMID: Cf = point("roomid_shortroomid", 2);
/// Short room id → room id.
pub static SHORTROOMID_ROOMID: Cf = point("shortroomid_roomid", 2);
/// User id → short user id.
pub static USERID_SHORTUSERID: Cf = point("userid_shortuserid", 3);
/// Short user id → user id.
pub static SHORTUSERID_USERID: Cf = point("shortuserid_userid", 3);
/// Server name → short server id.
pub static SERVERNAME_SHORTSERVER: Cf = point("servername_shortserver", 1);
/// Short server id → server name.
pub static SHORTSERVER_SERVERNAME: Cf = point("shortserver_servername", 1);
/// `(event type, state key)` → short state key.
pub static STATEKEY_SHORTSTATEKEY: Cf = point("statekey_shortstatekey", 4);
/// Short state key → `(event type, state key)`.
pub static SHORTSTATEKEY_STATEKEY: Cf = point("shortstatekey_statekey", 4);

/// Short event id → canonical PDU JSON, exactly as signed.
pub static SHORTEVENTID_PDU: Cf =
    Cf { name: "shorteventid_pdu", access: Access::Point, compression: Compression::Zstd, cache_percent: 19 };
/// `(short room id, stream position)` → short event id: the timeline.
pub static ROOMCOUNT_SHORTEVENTID: Cf = scan("roomcount_shorteventid", 5);
/// `(destination, sequence)` → queued PDU/EDU reference: the durable federation queue.
pub static DESTSEQ_OUTBOUND: Cf = scan("destseq_outbound", 3);

/// Short event id → event metadata (room, depth, stream position, flags, state before).
pub static SHORTEVENTID_EVENTMETA: Cf = point("shorteventid_eventmeta", 6);
/// Short room id → room record (version, current state snapshot, depth).
pub static SHORTROOMID_ROOMINFO: Cf = point("shortroomid_roominfo", 2);
/// `(short room id, short event id)` → (): the room's forward extremities.
pub static ROOMEVENT_EXTREMITY: Cf = scan("roomevent_extremity", 1);
/// `(short room id, short event id)` → (): events taken on a remote's state
/// to bridge a gap, outside the timeline, whose history backfill still owes.
pub static ROOMEVENT_HOLE: Cf = scan("roomevent_hole", 0);
/// `(prev short event id, child short event id)` → (): prev-event edges, by parent.
pub static PREVEVENT_CHILDEVENT: Cf = scan("prevevent_childevent", 2);
/// Snapshot id → state layer (parent + added/removed entries, or a full state).
pub static SHORTSTATEHASH_STATELAYER: Cf = point("shortstatehash_statelayer", 5);
/// SHA-256 of a full state → snapshot id, so identical states share one id.
pub static STATEHASH_SHORTSTATEHASH: Cf = point("statehash_shortstatehash", 2);

/// User id → account (password hash, flags).
pub static USERID_ACCOUNT: Cf = point("userid_account", 1);
/// User id → ms since the epoch when an admin erased the account (Synapse's
/// `erase` on deactivation): its profile is gone and it reads as erased.
pub static USERID_ERASED: Cf = point("userid_erased", 0);
/// User id → the devices of an account whose deactivation has not finished
/// (written with the deactivation itself; the rooms are left after it, and a
/// restart finishes what a crash cut off).
pub static USERID_DEACTIVATING: Cf = point("userid_deactivating", 0);
/// User id → ms since the epoch when the guest account was made (Client-Server API
/// §"Guest Access"); the row goes when the guest upgrades to a full account.
pub static USERID_GUEST: Cf = point("userid_guest", 0);
/// Access token → session (user, device).
pub static TOKEN_SESSION: Cf = point("token_session", 1);
/// `(user id, device id)` → device.
pub static USERDEVICE_DEVICE: Cf = scan("userdevice_device", 0);
/// `(user id, room id or "", type)` → account data JSON.
pub static USERROOMTYPE_ACCOUNTDATA: Cf = scan("userroomtype_accountdata", 1);
/// `(user id, stream position)` → `(room id or "", type)`: a user's account data by
/// when it was written, so an incremental `/sync` reads only what changed.
pub static USERCOUNT_ACCOUNTDATA: Cf = scan("usercount_accountdata", 0);
/// `(user id, filter id)` → filter JSON.
pub static USERFILTER_FILTER: Cf = point("userfilter_filter", 1);
/// `(user id, device id, transaction id)` → event id: idempotent sends.
pub static USERDEVICETXN_EVENTID: Cf = point("userdevicetxn_eventid", 0);
/// Short event id → `(device id, transaction id)` it was sent with: the sending
/// device sees its transaction id in the event's `unsigned`.
pub static SHORTEVENTID_TXN: Cf = point("shorteventid_txn", 1);
/// `(user id, short room id)` → the user's membership in the room (local users).
pub static USERROOM_MEMBERSHIP: Cf = scan("userroom_membership", 2);

/// Room alias → room id and creator (local aliases).
pub static ALIAS_ROOM: Cf = point("alias_room", 1);
/// `(room id, alias)` → (): a room's local aliases.
pub static ROOMALIAS_NONE: Cf = scan("roomalias_none", 1);

/// `(user id, device id, stream position)` → a to-device message waiting for delivery.
pub static USERDEVICECOUNT_TODEVICE: Cf = scan("userdevicecount_todevice", 1);

/// Redacted short event id → the redaction's short event id.
pub static SHORTEVENTID_REDACTION: Cf = point("shorteventid_redaction", 1);
/// `(related-to short event id, child count)` → relation (type, child, sender, key).
pub static TARGETCOUNT_RELATION: Cf = scan("targetcount_relation", 2);
/// `(short room id, thread root short event id)` → count of the latest reply.
pub static ROOMROOT_THREAD: Cf = scan("roomroot_thread", 1);

/// User id → profile (display name, avatar URL), local users.
pub static USERID_PROFILE: Cf = point("userid_profile", 1);

/// `(room id, user id, receipt type, thread id)` → receipt.
pub static ROOMUSERTYPE_RECEIPT: Cf = scan("roomusertype_receipt", 1);

/// `(room id, stream position)` → `(user id, receipt type, thread id)`: a room's
/// receipts by when they were set, so an incremental `/sync` reads only the new ones.
pub static ROOMCOUNT_RECEIPT: Cf = scan("roomcount_receipt", 0);

/// Room id → (): rooms published in the public room directory.
pub static ROOMID_PUBLIC: Cf = point("roomid_public", 0);

/// `(short room id, word, count)` → short event id: the full-text search index.
pub static ROOMWORDCOUNT_EVENT: Cf =
    Cf { name: "roomwordcount_event", access: Access::Scan, compression: Compression::Zstd, cache_percent: 1 };

/// `(server name, media id)` → media metadata.
pub static SERVERMEDIA_META: Cf = point("servermedia_meta", 1);
/// SHA-256 of a file → how many media ids use it.
pub static HASH_REFCOUNT: Cf = point("hash_refcount", 0);

/// Server name → its verified signing keys and their validity.
pub static SERVERNAME_SERVERKEYS: Cf = point("servername_serverkeys", 0);

/// `(local user id, room id)` → stripped state of a room we were invited to over federation.
pub static USERROOM_INVITESTATE: Cf = point("userroom_invitestate", 0);

/// Room id → milliseconds since the epoch when an operator shut the room down here.
pub static ROOMID_SHUTDOWN: Cf = point("roomid_shutdown", 0);

/// Server name → `"allow"` or `"deny"`: federation lists changed at runtime.
pub static SERVERNAME_POLICY: Cf = point("servername_policy", 0);

/// Server name → its last accepted key document, as received (served as a notary).
pub static SERVERNAME_KEYDOC: Cf = point("servername_keydoc", 0);

/// Server name → when the federation sender may try it next, and its backoff step.
pub static SERVERNAME_BACKOFF: Cf = point("servername_backoff", 0);

/// `(user id, device id)` → the device's signed identity keys (local devices, and remote ones as last fetched).
pub static USERDEVICE_DEVICEKEYS: Cf = scan("userdevice_devicekeys", 0);
/// `(user id, device id, "algorithm:key id")` → an unclaimed one-time key.
pub static USERDEVICEKEY_ONETIMEKEY: Cf = scan("userdevicekey_onetimekey", 0);
/// `(user id, device id, algorithm)` → the device's fallback key and whether it was handed out.
pub static USERDEVICEALGO_FALLBACKKEY: Cf = scan("userdevicealgo_fallbackkey", 0);
/// `(user id, "master" | "self_signing" | "user_signing")` → a cross-signing key.
pub static USERUSAGE_CROSSSIGNINGKEY: Cf = scan("userusage_crosssigningkey", 0);
/// `(stream position, user id)` → (): the log of device-list changes /sync reports.
pub static COUNTUSER_KEYCHANGE: Cf = scan("countuser_keychange", 0);

/// `(origin server, transaction id)` → when it was processed (ms): inbound deduplication.
pub static ORIGINTXN_SEEN: Cf = point("origintxn_seen", 0);

/// `(origin server, transaction id)` → when it was answered (ms) and the answer's
/// JSON bytes: a replayed `/send/{txnId}` gets the first answer.
pub static ORIGINTXN_ANSWER: Cf = point("origintxn_answer", 0);

/// `(origin server, event id)` → an inbound PDU waiting for its auth events
/// (its JSON, room version, tries, next try): kept across restarts.
pub static ORIGINEVENT_PENDING: Cf = point("originevent_pending", 0);

/// `(other server's user id, key id, local signer)` → the signer's signatures on that key.
pub static USERKEYSIGNER_SIGNATURES: Cf = scan("userkeysigner_signatures", 0);

/// Appservice id → its registration YAML (added with `myelin admin appservice add`).
pub static APPSERVICE_REGISTRATION: Cf = point("appservice_registration", 0);
/// `(appservice id, stream position)` → short event id: the durable appservice queue,
/// written in the event's own batch.
pub static APPSERVICESEQ_EVENT: Cf = scan("appserviceseq_event", 0);
/// Appservice id → its sender's state (next transaction id, the transaction in flight).
pub static APPSERVICE_SENDER: Cf = point("appservice_sender", 0);
/// `(appservice id, stream position)` → a to-device message for one of its users
/// (MSC4203), written in the message's own batch.
pub static APPSERVICESEQ_TODEVICE: Cf = scan("appserviceseq_todevice", 0);
/// Appservice id → the key-change stream position its delivered transactions
/// covered (MSC3202 `device_lists`).
pub static APPSERVICE_KEYCURSOR: Cf = point("appservice_keycursor", 0);

/// `(user id, app id, pushkey)` → the pusher's JSON.
pub static USERAPPKEY_PUSHER: Cf = point("userappkey_pusher", 0);
/// Stream position → short event id: appended events that may notify a pusher's user.
pub static PUSH_PENDING: Cf = scan("push_pending", 0);
/// `(pusher key, stream position)` → a notification waiting for its push gateway.
pub static PUSHERCOUNT_NOTIFICATION: Cf = scan("pushercount_notification", 0);
/// `(user id, backup version)` → the key backup's algorithm, `auth_data`, etag and session count.
pub static USERVERSION_KEYBACKUP: Cf = scan("userversion_keybackup", 0);
/// `(user id, backup version, room id, session id)` → one backed-up megolm session.
pub static USERVERSIONROOMSESSION_ROOMKEY: Cf = scan("userversionroomsession_roomkey", 0);
/// OpenID access token (it starts with its expiry, so key order is expiry order) → its user.
pub static OPENIDTOKEN_USER: Cf = scan("openidtoken_user", 0);
/// Login token for `m.login.token` (it starts with its expiry, so key order is expiry order) → its user.
pub static LOGINTOKEN_USER: Cf = scan("logintoken_user", 0);
/// `(milliseconds since the epoch, report id)` → a content report from a local user.
pub static TIMEREPORT_REPORT: Cf = scan("timereport_report", 0);
/// Registration token (admin-created, for `m.login.registration_token`) → its uses allowed, made and expiry.
pub static TOKEN_REGISTRATIONTOKEN: Cf = scan("token_registrationtoken", 0);

/// Every family, in creation order. The default family is unused.
pub static ALL: &[&Cf] = &[
    &GLOBAL,
    &EVENTID_SHORTEVENTID,
    &SHORTEVENTID_EVENTID,
    &ROOMID_SHORTROOMID,
    &SHORTROOMID_ROOMID,
    &USERID_SHORTUSERID,
    &SHORTUSERID_USERID,
    &SERVERNAME_SHORTSERVER,
    &SHORTSERVER_SERVERNAME,
    &STATEKEY_SHORTSTATEKEY,
    &SHORTSTATEKEY_STATEKEY,
    &SHORTEVENTID_PDU,
    &ROOMCOUNT_SHORTEVENTID,
    &DESTSEQ_OUTBOUND,
    &SHORTEVENTID_EVENTMETA,
    &SHORTROOMID_ROOMINFO,
    &ROOMEVENT_EXTREMITY,
    &ROOMEVENT_HOLE,
    &PREVEVENT_CHILDEVENT,
    &SHORTSTATEHASH_STATELAYER,
    &STATEHASH_SHORTSTATEHASH,
    &USERID_ACCOUNT,
    &USERID_ERASED,
    &USERID_DEACTIVATING,
    &USERID_GUEST,
    &TOKEN_SESSION,
    &USERDEVICE_DEVICE,
    &USERROOMTYPE_ACCOUNTDATA,
    &USERCOUNT_ACCOUNTDATA,
    &USERFILTER_FILTER,
    &USERDEVICETXN_EVENTID,
    &SHORTEVENTID_TXN,
    &USERROOM_MEMBERSHIP,
    &ALIAS_ROOM,
    &ROOMALIAS_NONE,
    &USERDEVICECOUNT_TODEVICE,
    &SHORTEVENTID_REDACTION,
    &TARGETCOUNT_RELATION,
    &ROOMROOT_THREAD,
    &USERID_PROFILE,
    &ROOMUSERTYPE_RECEIPT,
    &ROOMCOUNT_RECEIPT,
    &ROOMID_PUBLIC,
    &ROOMWORDCOUNT_EVENT,
    &SERVERMEDIA_META,
    &HASH_REFCOUNT,
    &SERVERNAME_SERVERKEYS,
    &USERROOM_INVITESTATE,
    &ROOMID_SHUTDOWN,
    &SERVERNAME_POLICY,
    &SERVERNAME_KEYDOC,
    &SERVERNAME_BACKOFF,
    &USERDEVICE_DEVICEKEYS,
    &USERDEVICEKEY_ONETIMEKEY,
    &USERDEVICEALGO_FALLBACKKEY,
    &USERUSAGE_CROSSSIGNINGKEY,
    &COUNTUSER_KEYCHANGE,
    &ORIGINTXN_SEEN,
    &ORIGINTXN_ANSWER,
    &ORIGINEVENT_PENDING,
    &USERKEYSIGNER_SIGNATURES,
    &APPSERVICE_REGISTRATION,
    &APPSERVICESEQ_EVENT,
    &APPSERVICE_SENDER,
    &APPSERVICESEQ_TODEVICE,
    &APPSERVICE_KEYCURSOR,
    &USERAPPKEY_PUSHER,
    &PUSH_PENDING,
    &PUSHERCOUNT_NOTIFICATION,
    &USERVERSION_KEYBACKUP,
    &USERVERSIONROOMSESSION_ROOMKEY,
    &OPENIDTOKEN_USER,
    &TIMEREPORT_REPORT,
    &LOGINTOKEN_USER,
    &TOKEN_REGISTRATIONTOKEN,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_shaped_key_value() {
        let mut seen = std::collections::HashSet::new();
        for cf in ALL {
            assert!(seen.insert(cf.name), "duplicate family {}", cf.name);
            assert!(cf.name == "global" || cf.name.contains('_'), "{} is not <key>_<value>", cf.name);
        }
        let total: u32 = ALL.iter().map(|cf| u32::from(cf.cache_percent)).sum();
        assert!(total <= 100, "cache shares add up to {total}%");
    }
}
