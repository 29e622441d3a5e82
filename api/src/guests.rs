//! What a guest may call.
//!
//! Client-Server API §"Guest Access", "Client behaviour": "The following API
//! endpoints are allowed to be accessed by guest accounts for retrieving
//! events", "…for sending events", "…for their own account maintenance",
//! "…for end-to-end encryption" (the lists below, plus the account and sync
//! endpoints every client needs: `whoami`, `logout`, `capabilities`, filters,
//! push rules, `/versions`-style reads). Every other endpoint answers a guest
//! with 403 `M_GUEST_ACCESS_FORBIDDEN`.

use std::sync::LazyLock;

use http::Method;

/// `(method, path under /_matrix/client/{v3,r0})` a guest may call.
const ALLOWED: &[(&str, &str)] = &[
    // Retrieving events.
    ("GET", "/rooms/{room_id}/state"),
    ("GET", "/rooms/{room_id}/state/{event_type}"),
    ("GET", "/rooms/{room_id}/state/{event_type}/{state_key}"),
    ("GET", "/rooms/{room_id}/context/{event_id}"),
    ("GET", "/rooms/{room_id}/event/{event_id}"),
    ("GET", "/rooms/{room_id}/members"),
    ("GET", "/rooms/{room_id}/joined_members"),
    ("GET", "/rooms/{room_id}/messages"),
    ("GET", "/sync"),
    ("GET", "/pushrules/"),
    ("GET", "/pushrules/global/"),
    ("GET", "/pushrules/{scope}/{kind}/{rule_id}"),
    ("GET", "/publicRooms"),
    ("POST", "/publicRooms"),
    ("GET", "/directory/room/{alias}"),
    ("POST", "/user/{user_id}/filter"),
    ("GET", "/user/{user_id}/filter/{filter_id}"),
    // Sending events.
    ("POST", "/rooms/{room_id}/join"),
    ("POST", "/join/{room_id}"),
    ("POST", "/rooms/{room_id}/leave"),
    ("PUT", "/rooms/{room_id}/send/{event_type}/{txn_id}"),
    ("PUT", "/sendToDevice/{event_type}/{txn_id}"),
    ("PUT", "/rooms/{room_id}/typing/{user_id}"),
    ("POST", "/rooms/{room_id}/receipt/{receipt_type}/{event_id}"),
    ("POST", "/rooms/{room_id}/read_markers"),
    // Account maintenance.
    ("GET", "/profile/{user_id}"),
    ("GET", "/profile/{user_id}/displayname"),
    ("PUT", "/profile/{user_id}/displayname"),
    ("GET", "/profile/{user_id}/avatar_url"),
    ("PUT", "/profile/{user_id}/avatar_url"),
    ("GET", "/presence/{user_id}/status"),
    ("PUT", "/presence/{user_id}/status"),
    ("GET", "/user/{user_id}/account_data/{type}"),
    ("PUT", "/user/{user_id}/account_data/{type}"),
    ("GET", "/user/{user_id}/rooms/{room_id}/account_data/{type}"),
    ("PUT", "/user/{user_id}/rooms/{room_id}/account_data/{type}"),
    ("GET", "/user/{user_id}/rooms/{room_id}/tags"),
    ("PUT", "/user/{user_id}/rooms/{room_id}/tags/{tag}"),
    ("DELETE", "/user/{user_id}/rooms/{room_id}/tags/{tag}"),
    ("GET", "/devices"),
    ("GET", "/devices/{device_id}"),
    ("PUT", "/devices/{device_id}"),
    ("GET", "/account/whoami"),
    ("GET", "/capabilities"),
    ("GET", "/voip/turnServer"),
    ("POST", "/logout"),
    ("POST", "/register"),
    // End-to-end encryption.
    ("POST", "/keys/query"),
    ("POST", "/keys/upload"),
    ("POST", "/keys/claim"),
    ("GET", "/keys/changes"),
];

static ROUTES: LazyLock<matchit::Router<Vec<Method>>> = LazyLock::new(|| {
    let mut paths: Vec<(String, Vec<Method>)> = Vec::new();
    for (method, path) in ALLOWED {
        let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        for prefix in ["/_matrix/client/v3", "/_matrix/client/r0"] {
            let full = format!("{prefix}{path}");
            match paths.iter_mut().find(|(p, _)| *p == full) {
                Some((_, methods)) => methods.push(method.clone()),
                None => paths.push((full, vec![method.clone()])),
            }
        }
    }
    let mut router = matchit::Router::new();
    for (path, methods) in paths {
        // The templates are the constants above; the unit test below inserts each one.
        let _ = router.insert(path, methods);
    }
    router
});

/// Whether a guest may make this request.
pub fn allowed(method: &Method, path: &str) -> bool {
    let method = if method == Method::HEAD { &Method::GET } else { method };
    // Guests read the media the rooms they are in refer to (Synapse lets them).
    if method == Method::GET && path.starts_with("/_matrix/client/v1/media/") {
        return true;
    }
    let found = ROUTES.at(path).or_else(|_| ROUTES.at(path.strip_suffix('/').unwrap_or(path)));
    found.is_ok_and(|m| m.value.contains(method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_routable_and_others_are_not() {
        let mut router = matchit::Router::new();
        for (i, (_, path)) in ALLOWED.iter().enumerate() {
            // Duplicate templates (different methods) are fine; bad ones are not.
            if let Err(e) = router.insert(format!("/_matrix/client/v3{path}"), i) {
                assert!(matches!(e, matchit::InsertError::Conflict { .. }), "{path}: {e}");
            }
        }
        assert!(allowed(&Method::GET, "/_matrix/client/v3/sync"));
        assert!(allowed(&Method::PUT, "/_matrix/client/r0/rooms/!a:b/send/m.room.message/1"));
        assert!(allowed(&Method::GET, "/_matrix/client/v3/rooms/!a:b/state/m.room.name/"));
        assert!(!allowed(&Method::POST, "/_matrix/client/v3/createRoom"));
        assert!(!allowed(&Method::PUT, "/_matrix/client/v3/rooms/!a:b/state/m.room.name"));
        assert!(!allowed(&Method::POST, "/_matrix/client/v3/rooms/!a:b/invite"));
        assert!(!allowed(&Method::DELETE, "/_matrix/client/v3/devices/D"));
        assert!(allowed(&Method::GET, "/_matrix/client/v1/media/download/s/m"));
        assert!(!allowed(&Method::POST, "/_matrix/client/v1/media/create"));
    }
}
