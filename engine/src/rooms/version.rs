//! Room versions: which we read, which we create, and their rules.
//!
//! Room versions (spec §"Room Versions"): every room has a version fixed by
//! its `m.room.create` event, and the version decides event ids, redaction,
//! authorization and state resolution. The rules themselves come from ruma
//! (`RoomVersionId::rules()`); this module only decides support.
//!
//! We read, verify and create every stable version 1–12; 12 is the default,
//! as in Synapse 1.163. Versions 1 and 2 carry origin-chosen event ids and
//! `[id, hash]` references (`build.rs`); version 1 resolves state with v1
//! (`resolve_v1.rs`), the rest with ruma's v2.

use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

use super::RoomError;

/// The version of new rooms unless the creator asks for another.
pub const DEFAULT: RoomVersionId = RoomVersionId::V12;

/// Versions whose events we read and verify.
pub const READABLE: &[RoomVersionId] = &[
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

/// Versions a room may be created in: every readable one.
pub const CREATABLE: &[RoomVersionId] = READABLE;

/// The rules of a readable version.
pub fn rules(version: &RoomVersionId) -> Result<RoomVersionRules, RoomError> {
    if !READABLE.contains(version) {
        return Err(RoomError::UnsupportedVersion(version.to_string()));
    }
    version.rules().ok_or_else(|| RoomError::UnsupportedVersion(version.to_string()))
}

/// Checks that rooms may be created in `version`.
pub fn check_creatable(version: &RoomVersionId) -> Result<RoomVersionRules, RoomError> {
    if !CREATABLE.contains(version) {
        return Err(RoomError::UnsupportedVersion(version.to_string()));
    }
    rules(version)
}
