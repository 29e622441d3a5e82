//! The routing tables of both listeners.

pub(crate) mod client;
mod discovery;
mod fed;
pub(crate) mod keys;
pub(crate) mod media;
mod ops;
pub(crate) mod synapse_admin;

use http::Method;

use crate::router::Router;

/// Routes of the client listener (plain HTTP).
pub fn client_router() -> Router {
    let mut r = Router::new();
    r.add(Method::GET, "/_matrix/client/versions", discovery::versions)
        .add(Method::GET, "/.well-known/matrix/client", discovery::well_known_client)
        .add(Method::GET, "/.well-known/matrix/server", discovery::well_known_server)
        .add(Method::GET, "/_matrix/key/v2/server", keys::server_keys)
        .add(Method::GET, "/_matrix/key/v2/server/{key_id}", keys::server_keys)
        .add(Method::GET, "/metrics", ops::metrics)
        .add(Method::GET, "/health", ops::health);
    client::add(&mut r);
    media::add(&mut r);
    synapse_admin::add(&mut r);
    r
}

/// Routes of the federation listener (TLS).
pub fn federation_router() -> Router {
    let mut r = Router::new();
    media::add_federation(&mut r);
    r.add(Method::GET, "/_matrix/federation/v1/version", discovery::federation_version)
        .add(Method::GET, "/.well-known/matrix/server", discovery::well_known_server)
        .add(Method::GET, "/_matrix/key/v2/server", keys::server_keys)
        .add(Method::GET, "/_matrix/key/v2/server/{key_id}", keys::server_keys)
        .add(Method::POST, "/_matrix/key/v2/query", keys::query_keys)
        .add(Method::GET, "/_matrix/key/v2/query/{server_name}", keys::query_server_keys)
        .add(Method::GET, "/_matrix/federation/v1/query/profile", fed::query_profile)
        .add(Method::GET, "/_matrix/federation/v1/query/directory", fed::query_directory)
        .add(Method::GET, "/_matrix/federation/v1/openid/userinfo", client::openid::userinfo)
        .add(Method::GET, "/_matrix/federation/v1/user/devices/{user_id}", crate::federation::e2ee::user_devices)
        .add(Method::POST, "/_matrix/federation/v1/user/keys/query", crate::federation::e2ee::keys_query)
        .add(Method::POST, "/_matrix/federation/v1/user/keys/claim", crate::federation::e2ee::keys_claim)
        .add(Method::GET, "/_matrix/federation/v1/make_join/{room_id}/{user_id}", crate::federation::rooms::make_join)
        .add(Method::GET, "/_matrix/federation/v1/make_leave/{room_id}/{user_id}", crate::federation::rooms::make_leave)
        .add(Method::GET, "/_matrix/federation/v1/make_knock/{room_id}/{user_id}", crate::federation::rooms::make_knock)
        .add(
            Method::PUT,
            "/_matrix/federation/v1/send_knock/{room_id}/{event_id}",
            crate::federation::rooms::send_knock,
        )
        .add(
            Method::PUT,
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            crate::federation::rooms::send_leave,
        )
        .add_limited(
            Method::PUT,
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            crate::federation::rooms::send_join,
            1 << 20,
        )
        .add_limited(
            Method::PUT,
            "/_matrix/federation/v1/send_join/{room_id}/{event_id}",
            crate::federation::rooms::send_join_v1,
            1 << 20,
        )
        .add_limited(
            Method::PUT,
            "/_matrix/federation/v1/send/{txn_id}",
            crate::federation::rooms::send_transaction,
            // 50 PDUs of at most 64 KiB and 100 EDUs without a specced size:
            // room for 200 of 64 KiB, the limit Synapse applies.
            200 * 65_536,
        )
        .add(Method::GET, "/_matrix/federation/v1/event/{event_id}", crate::federation::rooms::get_event)
        .add(
            Method::PUT,
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            crate::federation::rooms::receive_invite,
        )
        .add(Method::GET, "/_matrix/federation/v1/backfill/{room_id}", crate::federation::rooms::backfill)
        .add(Method::GET, "/_matrix/federation/v1/state_ids/{room_id}", crate::federation::rooms::state_ids)
        .add(Method::GET, "/_matrix/federation/v1/state/{room_id}", crate::federation::rooms::state)
        .add(
            Method::GET,
            "/_matrix/federation/v1/event_auth/{room_id}/{event_id}",
            crate::federation::rooms::event_auth,
        )
        .add(Method::GET, "/_matrix/federation/v1/publicRooms", client::public_rooms::federation_public_rooms)
        .add(Method::POST, "/_matrix/federation/v1/publicRooms", client::public_rooms::federation_public_rooms)
        .add(
            Method::POST,
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            crate::federation::rooms::get_missing_events,
        )
        .add(Method::GET, "/health", ops::health);
    r
}
