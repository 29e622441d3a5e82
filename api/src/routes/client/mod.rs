//! The Client-Server API routes (`/_matrix/client/{r0,v3}/…`).

pub(crate) mod account;
mod appservice;
pub(crate) mod devices;
pub(crate) mod directory;
pub(crate) mod e2ee;
mod ephemeral;
pub(crate) mod key_backup;
pub(crate) mod openid;
mod power;
pub(crate) mod profile;
pub(crate) mod public_rooms;
mod push;
pub(crate) mod pushers;
pub(crate) mod relations;
pub(crate) mod rooms;
pub(crate) mod search;
mod sliding;
pub(crate) mod sync;
mod tags;
mod voip;

use http::Method;

use crate::router::{Handler, Router};

/// Registers `path` (written after `/_matrix/client/v3`) under both v3 and the legacy r0 prefix.
fn both(r: &mut Router, method: Method, path: &str, handler: Handler) {
    r.add(method.clone(), &format!("/_matrix/client/v3{path}"), handler);
    r.add(method, &format!("/_matrix/client/r0{path}"), handler);
}

/// Like [`both`], with its own body limit.
fn both_limited(r: &mut Router, method: Method, path: &str, handler: Handler, max_body: usize) {
    r.add_limited(method.clone(), &format!("/_matrix/client/v3{path}"), handler, max_body);
    r.add_limited(method, &format!("/_matrix/client/r0{path}"), handler, max_body);
}

/// Body limit of a key backup upload: many sessions of up to 64 KiB each.
const ROOM_KEYS_MAX_BODY: usize = 16 << 20;

/// Adds every client route to `r`.
pub fn add(r: &mut Router) {
    use Method as M;
    both(r, M::POST, "/register", account::register);
    both(r, M::GET, "/register/available", account::register_available);
    r.add(M::GET, "/_matrix/client/v1/register/m.login.registration_token/validity", account::token_validity);
    both(r, M::GET, "/login", account::login_flows);
    both(r, M::POST, "/login", account::login);
    r.add(M::POST, "/_matrix/client/v1/login/get_token", account::get_login_token);
    r.add(M::POST, "/_matrix/client/unstable/org.matrix.msc3882/login/get_token", account::get_login_token);
    both(r, M::POST, "/logout", account::logout);
    both(r, M::POST, "/logout/all", account::logout_all);
    both(r, M::GET, "/account/whoami", account::whoami);
    both(r, M::POST, "/account/password", account::change_password);
    both(r, M::POST, "/account/deactivate", account::deactivate);
    both(r, M::GET, "/devices", devices::devices);
    both(r, M::GET, "/devices/{device_id}", devices::device);
    both(r, M::PUT, "/devices/{device_id}", devices::rename_device);
    both(r, M::DELETE, "/devices/{device_id}", devices::delete_device);
    both(r, M::POST, "/delete_devices", devices::delete_devices);
    both(r, M::GET, "/capabilities", devices::capabilities);
    both(r, M::GET, "/pushrules/", push::get_all);
    both(r, M::GET, "/pushrules/global/", push::get_all);
    both(r, M::GET, "/pushrules/{scope}/{kind}/{rule_id}", push::get_rule);
    both(r, M::PUT, "/pushrules/{scope}/{kind}/{rule_id}", push::put_rule);
    both(r, M::DELETE, "/pushrules/{scope}/{kind}/{rule_id}", push::delete_rule);
    both(r, M::GET, "/pushrules/{scope}/{kind}/{rule_id}/enabled", push::get_attribute);
    both(r, M::PUT, "/pushrules/{scope}/{kind}/{rule_id}/enabled", push::put_attribute);
    both(r, M::GET, "/pushrules/{scope}/{kind}/{rule_id}/actions", push::get_attribute);
    both(r, M::PUT, "/pushrules/{scope}/{kind}/{rule_id}/actions", push::put_attribute);
    both(r, M::GET, "/notifications", push::notifications);

    both(r, M::POST, "/createRoom", rooms::create_room);
    both(r, M::POST, "/join/{room_id}", rooms::join);
    both(r, M::POST, "/rooms/{room_id}/join", rooms::join);
    both(r, M::POST, "/knock/{room_id}", rooms::knock);
    both(r, M::POST, "/rooms/{room_id}/invite", rooms::invite);
    both(r, M::POST, "/rooms/{room_id}/leave", rooms::leave);
    both(r, M::POST, "/rooms/{room_id}/kick", rooms::kick);
    both(r, M::POST, "/rooms/{room_id}/ban", rooms::ban);
    both(r, M::POST, "/rooms/{room_id}/unban", rooms::unban);
    both(r, M::POST, "/rooms/{room_id}/forget", rooms::forget);
    both(r, M::POST, "/rooms/{room_id}/upgrade", rooms::upgrade);
    both(r, M::GET, "/joined_rooms", rooms::joined_rooms);
    both(r, M::PUT, "/rooms/{room_id}/send/{event_type}/{txn_id}", rooms::send);
    both(r, M::PUT, "/rooms/{room_id}/state/{event_type}", rooms::put_state);
    both(r, M::PUT, "/rooms/{room_id}/state/{event_type}/{state_key}", rooms::put_state);
    both(r, M::GET, "/rooms/{room_id}/state/{event_type}", rooms::get_state_event);
    both(r, M::GET, "/rooms/{room_id}/state/{event_type}/{state_key}", rooms::get_state_event);
    both(r, M::GET, "/rooms/{room_id}/state", rooms::get_state);
    both(r, M::GET, "/rooms/{room_id}/event/{event_id}", rooms::get_event);
    both(r, M::GET, "/rooms/{room_id}/members", rooms::members);
    both(r, M::GET, "/rooms/{room_id}/joined_members", rooms::joined_members);
    both(r, M::GET, "/rooms/{room_id}/messages", rooms::messages);
    both(r, M::GET, "/rooms/{room_id}/context/{event_id}", rooms::context);
    r.add(M::GET, "/_matrix/client/v1/rooms/{room_id}/timestamp_to_event", rooms::timestamp_to_event);
    both(r, M::PUT, "/rooms/{room_id}/redact/{event_id}/{txn_id}", relations::redact);
    for prefix in ["/_matrix/client/v1", "/_matrix/client/v3"] {
        r.add(M::GET, &format!("{prefix}/rooms/{{room_id}}/relations/{{event_id}}"), relations::relations);
        r.add(M::GET, &format!("{prefix}/rooms/{{room_id}}/relations/{{event_id}}/{{rel_type}}"), relations::relations);
        r.add(
            M::GET,
            &format!("{prefix}/rooms/{{room_id}}/relations/{{event_id}}/{{rel_type}}/{{event_type}}"),
            relations::relations,
        );
        r.add(M::GET, &format!("{prefix}/rooms/{{room_id}}/threads"), relations::threads);
    }

    both(r, M::GET, "/directory/room/{alias}", directory::resolve);
    both(r, M::PUT, "/directory/room/{alias}", directory::create);
    both(r, M::DELETE, "/directory/room/{alias}", directory::delete);
    both(r, M::GET, "/rooms/{room_id}/aliases", directory::room_aliases);
    both(r, M::GET, "/directory/list/room/{room_id}", public_rooms::get_visibility);
    both(r, M::PUT, "/directory/list/room/{room_id}", public_rooms::set_visibility);
    both(r, M::GET, "/publicRooms", public_rooms::get_public_rooms);
    both(r, M::POST, "/publicRooms", public_rooms::post_public_rooms);
    both(r, M::GET, "/thirdparty/protocols", appservice::protocols);
    both(r, M::GET, "/thirdparty/protocol/{protocol}", appservice::protocol);
    both(r, M::GET, "/thirdparty/location/{protocol}", appservice::locations);
    both(r, M::GET, "/thirdparty/user/{protocol}", appservice::users);
    both(r, M::GET, "/thirdparty/location", appservice::locations_of_alias);
    both(r, M::GET, "/thirdparty/user", appservice::users_of_user_id);
    both(r, M::PUT, "/directory/list/appservice/{network_id}/{room_id}", appservice::publish);
    r.add(M::POST, "/_matrix/client/v1/appservice/{appservice_id}/ping", appservice::ping);

    both(r, M::GET, "/profile/{user_id}", profile::get_profile);
    both(r, M::GET, "/profile/{user_id}/displayname", profile::get_displayname);
    both(r, M::PUT, "/profile/{user_id}/displayname", profile::put_displayname);
    both(r, M::GET, "/profile/{user_id}/avatar_url", profile::get_avatar_url);
    both(r, M::PUT, "/profile/{user_id}/avatar_url", profile::put_avatar_url);
    both(r, M::POST, "/user_directory/search", profile::search_users);

    both(r, M::PUT, "/rooms/{room_id}/typing/{user_id}", ephemeral::typing);
    both(r, M::POST, "/rooms/{room_id}/receipt/{receipt_type}/{event_id}", ephemeral::receipt);
    both(r, M::POST, "/rooms/{room_id}/read_markers", ephemeral::read_markers);
    both(r, M::GET, "/presence/{user_id}/status", ephemeral::get_presence);
    both(r, M::PUT, "/presence/{user_id}/status", ephemeral::put_presence);

    both(r, M::POST, "/search", search::search);
    both(r, M::GET, "/pushers", pushers::list);
    both(r, M::POST, "/pushers/set", pushers::set);

    both(r, M::POST, "/keys/upload", e2ee::upload);
    both(r, M::POST, "/keys/query", e2ee::query);
    both(r, M::POST, "/keys/claim", e2ee::claim);
    both(r, M::GET, "/keys/changes", e2ee::changes);
    both(r, M::POST, "/keys/device_signing/upload", e2ee::upload_cross_signing);
    both(r, M::POST, "/keys/signatures/upload", e2ee::upload_signatures);

    both(r, M::POST, "/room_keys/version", key_backup::create_version);
    both(r, M::GET, "/room_keys/version", key_backup::get_version);
    both(r, M::GET, "/room_keys/version/{version}", key_backup::get_version);
    both(r, M::PUT, "/room_keys/version/{version}", key_backup::update_version);
    both(r, M::DELETE, "/room_keys/version/{version}", key_backup::delete_version);
    for path in ["/room_keys/keys", "/room_keys/keys/{room_id}", "/room_keys/keys/{room_id}/{session_id}"] {
        both(r, M::GET, path, key_backup::get_keys);
        both_limited(r, M::PUT, path, key_backup::put_keys, ROOM_KEYS_MAX_BODY);
        both(r, M::DELETE, path, key_backup::delete_keys);
    }

    both(r, M::POST, "/user/{user_id}/openid/request_token", openid::request_token);
    both(r, M::GET, "/voip/turnServer", voip::turn_server);
    both(r, M::POST, "/rooms/{room_id}/report/{event_id}", rooms::report_event);
    both(r, M::POST, "/rooms/{room_id}/report", rooms::report_room);
    both(r, M::GET, "/account/3pid", devices::threepids);

    // A long-poll: its deadline is the handler timeout plus the longest wait it honours.
    for prefix in ["/_matrix/client/v3", "/_matrix/client/r0"] {
        r.add_long_poll(M::GET, &format!("{prefix}/sync"), sync::sync, sync::MAX_TIMEOUT);
    }
    r.add_long_poll(
        M::POST,
        "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
        sliding::sync,
        sliding::MAX_TIMEOUT,
    );
    r.add(M::GET, "/_matrix/client/v1/auth_metadata", sliding::auth_metadata);
    r.add(M::GET, "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata", sliding::auth_metadata);
    both(r, M::PUT, "/sendToDevice/{event_type}/{txn_id}", sync::send_to_device);
    both(r, M::POST, "/user/{user_id}/filter", sync::put_filter);
    both(r, M::GET, "/user/{user_id}/filter/{filter_id}", sync::get_filter);
    both(r, M::PUT, "/user/{user_id}/account_data/{type}", sync::put_account_data);
    both(r, M::GET, "/user/{user_id}/account_data/{type}", sync::get_account_data);
    both(r, M::PUT, "/user/{user_id}/rooms/{room_id}/account_data/{type}", sync::put_account_data);
    both(r, M::GET, "/user/{user_id}/rooms/{room_id}/tags", tags::get_tags);
    both(r, M::PUT, "/user/{user_id}/rooms/{room_id}/tags/{tag}", tags::put_tag);
    both(r, M::DELETE, "/user/{user_id}/rooms/{room_id}/tags/{tag}", tags::delete_tag);
    both(r, M::GET, "/user/{user_id}/rooms/{room_id}/account_data/{type}", sync::get_account_data);
}
