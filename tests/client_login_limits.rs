//! Wrong passwords are rate limited per account (issue #25: sixty wrong
//! passwords in a row were all answered): after `login_failures_burst`
//! failures, tries are refused with 429 `M_LIMIT_EXCEEDED` and
//! `retry_after_ms` before the password is looked at; other accounts are not
//! affected, and the owner logs in again once the bucket refills.

use http::{Method, StatusCode};
use myelin_suite::{TestServer, http};
use serde_json::json;

async fn login(s: &TestServer, user: &str, password: &str) -> myelin_suite::Reply {
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": user }, "password": password });
    http(s.client, Method::POST, "/_matrix/client/v3/login", Some(body.to_string().as_bytes())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_wrong_passwords_are_cut_off_after_the_burst_and_the_owner_gets_back_in() {
    let s = TestServer::start_with("limits.test", |c| {
        c.registration.enabled = true;
        c.rate_limit.login_failures_burst = 5;
        c.rate_limit.login_failures_per_second = 2.0;
    })
    .await;
    s.register("alice").await;
    s.register("bob").await;
    let mut statuses = Vec::new();
    let mut retry = None;
    for _ in 0..60 {
        let r = login(&s, "alice", "guess").await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.errcode(), "M_LIMIT_EXCEEDED");
            retry = r.json()["retry_after_ms"].as_u64();
        }
        statuses.push(r.status.as_u16());
    }
    let forbidden = statuses.iter().filter(|s| **s == 403).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    // At 2/s refill, a minute of tries cannot take more than a handful beyond the burst.
    assert!((5..=8).contains(&forbidden), "{statuses:?}");
    assert_eq!(forbidden + limited, 60, "{statuses:?}");
    assert!(retry.is_some_and(|ms| ms > 0 && ms <= 500), "retry_after_ms {retry:?}");
    // While limited, even the right password waits; another account does not.
    assert_eq!(login(&s, "alice", "pass-word-1").await.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(login(&s, "bob", "pass-word-1").await.status, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(login(&s, "alice", "pass-word-1").await.status, StatusCode::OK, "the owner gets back in");
    s.stop().await;
}

/// One address guessing one password across many accounts (spraying) is held
/// by the per-address bucket although no account reaches its own limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_guessing_across_many_accounts_is_cut_off_too() {
    let s = TestServer::start_with("limits.test", |c| {
        c.registration.enabled = true;
        c.rate_limit.login_failures_per_ip_burst = 8;
        c.rate_limit.login_failures_per_ip_per_second = 0.5;
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..30 {
        s.register(&format!("user{i}")).await;
        // One wrong password per account: each stays far below its own burst of 10.
        let r = login(&s, &format!("user{i}"), "Summer2026!").await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.errcode(), "M_LIMIT_EXCEEDED");
            assert!(r.json()["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", r.json());
        }
        statuses.push(r.status.as_u16());
    }
    let forbidden = statuses.iter().filter(|s| **s == 403).count();
    assert!((8..=12).contains(&forbidden), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 30 - forbidden, "{statuses:?}");
    // Visible to the operator: how many were refused, and how many buckets are held.
    let metrics = http(s.client, Method::GET, "/metrics", None).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.lines().any(|l| l.starts_with("myelin_rate_limited_total") && l.contains("login_address")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("myelin_rate_limit_buckets") && l.contains("login_failures_ip")));
    s.stop().await;
}

/// Changing the password (the only password reset: there is no e-mail reset)
/// asks for the current one, and wrong ones are limited like logins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_current_passwords_on_a_password_change_are_limited_like_logins() {
    let s = TestServer::start_with("limits.test", |c| {
        c.registration.enabled = true;
        c.rate_limit.login_failures_burst = 5;
        c.rate_limit.login_failures_per_second = 0.1;
    })
    .await;
    let alice = s.register("alice").await;
    let change = |password: &str| {
        json!({ "new_password": "a-new-pass-word", "logout_devices": false,
            "auth": { "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" },
                "password": password } })
    };
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = alice.request(Method::POST, "/_matrix/client/v3/account/password", Some(change("guess"))).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.errcode(), "M_LIMIT_EXCEEDED");
            assert!(r.json()["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{}", r.json());
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 5, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7, "{statuses:?}");
    // While limited the right password waits too, and the password is unchanged.
    let r = alice.request(Method::POST, "/_matrix/client/v3/account/password", Some(change("pass-word-1"))).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(login(&s, "alice", "pass-word-1").await.status, StatusCode::TOO_MANY_REQUESTS, "same account bucket");
    s.stop().await;
}
