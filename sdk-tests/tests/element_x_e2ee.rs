//! Encrypted chat through Myelin with Element X's crypto (the `matrix-sdk` crate,
//! vodozemac): DMs on one server, across two Myelin servers and with Synapse, a
//! group on two servers, recovery from the key backup, and an offline receiver
//! reached through its fallback key. Each check asserts the decrypted text the
//! other side's SDK shows.

mod common;

use std::time::{Duration, Instant};

use common::*;
use matrix_sdk::{Client, ruma::UserId};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_encrypted_dm_decrypts_both_ways_and_on_a_new_device() {
    let server = Server::start().await;
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let _alice_sync = start_sync(&alice).await;
    let _bob_sync = start_sync(&bob).await;
    let alice_id = alice.user_id().unwrap().to_owned();

    // Bob opens an encrypted DM with Alice, as Element X does.
    let dm = encrypted_dm(&bob, &alice).await;
    let dm_id = dm.room_id().to_owned();

    let alice_tl = alice.get_room(&dm_id).unwrap().timeline().await.expect("alice's timeline");
    let bob_tl = dm.timeline().await.expect("bob's timeline");
    say(&dm, "the secret is 42").await;
    wait_decrypted(&alice_tl, "the secret is 42").await;
    say(&alice.get_room(&dm_id).unwrap(), "noted, bob").await;
    wait_decrypted(&bob_tl, "noted, bob").await;

    // Alice logs in on a second device: Bob's next message decrypts there too
    // (Bob's client learns of the device from the device-list change).
    let alice2 = login(&server, "alice").await;
    let _alice2_sync = start_sync(&alice2).await;
    eventually("the second device sees the DM", || alice2.get_room(&dm_id).is_some()).await;
    // Bob's client knows the new device (from the device-list change, or by asking).
    wait_devices(&bob, &alice_id, 2).await;
    let alice2_tl = alice2.get_room(&dm_id).unwrap().timeline().await.expect("second device's timeline");
    say(&dm, "hello, second device").await;
    wait_decrypted(&alice2_tl, "hello, second device").await;
    wait_decrypted(&alice_tl, "hello, second device").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_encrypted_dm_across_two_myelin_servers() {
    let here = Server::start_federating().await;
    let there = Server::start_federating().await;
    let alice = register(&here, "alice").await;
    let bob = register(&there, "bob").await;
    let _alice_sync = start_sync(&alice).await;
    let _bob_sync = start_sync(&bob).await;

    // Bob, on the other server, opens an encrypted DM with Alice.
    let dm = encrypted_dm(&bob, &alice).await;
    let dm_id = dm.room_id().to_owned();

    // Keys are queried and claimed over federation, the room key goes as a to-device EDU.
    let alice_tl = alice.get_room(&dm_id).unwrap().timeline().await.expect("alice's timeline");
    let bob_tl = dm.timeline().await.expect("bob's timeline");
    say(&dm, "across servers, encrypted").await;
    wait_decrypted(&alice_tl, "across servers, encrypted").await;
    say(&alice.get_room(&dm_id).unwrap(), "received, encrypted back").await;
    wait_decrypted(&bob_tl, "received, encrypted back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_encrypted_dm_between_myelin_and_synapse() {
    let synapse = Synapse::start().await;
    let myelin = Server::start_federating().await;
    let alice = register(&myelin, "alice").await;
    let bob =
        register_with(Client::builder().homeserver_url(synapse.url()).build().await.expect("client"), "bob").await;
    let _alice_sync = start_sync(&alice).await;
    let _bob_sync = start_sync(&bob).await;

    // Bob on Synapse opens an encrypted DM with Alice on Myelin.
    let dm = encrypted_dm(&bob, &alice).await;
    let dm_id = dm.room_id().to_owned();
    let alice_tl = alice.get_room(&dm_id).unwrap().timeline().await.expect("alice's timeline");
    let bob_tl = dm.timeline().await.expect("bob's timeline");
    say(&dm, "from Synapse, encrypted").await;
    wait_decrypted(&alice_tl, "from Synapse, encrypted").await;
    say(&alice.get_room(&dm_id).unwrap(), "from Myelin, encrypted").await;
    wait_decrypted(&bob_tl, "from Myelin, encrypted").await;

    // And the other way round: Alice on Myelin opens one with Bob on Synapse.
    let dm2 = encrypted_dm(&alice, &bob).await;
    let dm2_id = dm2.room_id().to_owned();
    let bob_tl2 = bob.get_room(&dm2_id).unwrap().timeline().await.expect("bob's second timeline");
    say(&dm2, "Myelin's room, encrypted").await;
    wait_decrypted(&bob_tl2, "Myelin's room, encrypted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_encrypted_group_of_three_on_two_myelin_servers() {
    let here = Server::start_federating().await;
    let there = Server::start_federating().await;
    let alice = register(&here, "alice").await;
    let bob = register(&here, "bob").await;
    let carol = register(&there, "carol").await;
    let _syncs = [start_sync(&alice).await, start_sync(&bob).await, start_sync(&carol).await];
    let (bob_id, carol_id) = (bob.user_id().unwrap().to_owned(), carol.user_id().unwrap().to_owned());

    let encryption = InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults());
    let room = alice
        .create_room(assign!(create_room::v3::Request::new(), {
            name: Some("ops".to_owned()),
            invite: vec![bob_id.clone(), carol_id.clone()],
            initial_state: vec![encryption.to_raw_any()],
        }))
        .await
        .expect("alice creates the group");
    let room_id = room.room_id().to_owned();
    for (who, c) in [("bob", &bob), ("carol", &carol)] {
        eventually(&format!("{who} is invited"), || {
            c.get_room(&room_id).is_some_and(|r| r.state() == RoomState::Invited)
        })
        .await;
        c.get_room(&room_id).unwrap().join().await.expect("join the group");
    }
    for who in [&bob_id, &carol_id] {
        wait_joined_member(&alice, &room_id, who).await;
    }
    wait_joined_member(&carol, &room_id, &bob_id).await;
    for (c, who) in [
        (&carol, alice.user_id()),
        (&carol, Some(bob_id.as_ref())),
        (&alice, Some(bob_id.as_ref())),
        (&alice, Some(carol_id.as_ref())),
    ] {
        wait_devices(c, who.unwrap(), 1).await;
    }
    let timelines = [
        room.timeline().await.expect("alice's timeline"),
        bob.get_room(&room_id).unwrap().timeline().await.expect("bob's timeline"),
        carol.get_room(&room_id).unwrap().timeline().await.expect("carol's timeline"),
    ];
    // Carol (the other server) writes: both users on the first server decrypt it.
    say(&carol.get_room(&room_id).unwrap(), "carol to the group").await;
    wait_decrypted(&timelines[0], "carol to the group").await;
    wait_decrypted(&timelines[1], "carol to the group").await;
    // Alice writes: Bob on her server and Carol across federation decrypt it.
    say(&room, "alice to the group").await;
    wait_decrypted(&timelines[1], "alice to the group").await;
    wait_decrypted(&timelines[2], "alice to the group").await;
}

/// A client with Element X's encryption settings for recovery: cross-signing made at
/// login, room keys fetched from the backup once the recovery key is known.
async fn recovery_client(server: &Server) -> Client {
    let settings = matrix_sdk::encryption::EncryptionSettings {
        auto_enable_cross_signing: true,
        backup_download_strategy: matrix_sdk::encryption::BackupDownloadStrategy::OneShot,
        auto_enable_backups: false,
    };
    Client::builder().homeserver_url(server.url()).with_encryption_settings(settings).build().await.expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_recovery_restores_history_on_a_new_device_from_the_key_backup() {
    let server = Server::start().await;
    let bob = register(&server, "bob").await;
    let alice = register_with(recovery_client(&server).await, "alice").await;
    let _syncs = [start_sync(&alice).await, start_sync(&bob).await];

    let dm = encrypted_dm(&bob, &alice).await;
    let dm_id = dm.room_id().to_owned();
    let alice_tl = alice.get_room(&dm_id).unwrap().timeline().await.expect("alice's timeline");
    say(&dm, "keep this for later").await;
    wait_decrypted(&alice_tl, "keep this for later").await;

    // Alice turns recovery on: a key backup (/room_keys) and secret storage (account data).
    let recovery_key = alice.encryption().recovery().enable().await.expect("enable recovery");
    alice.encryption().backups().wait_for_steady_state().await.expect("room keys uploaded");

    // A new device of hers never received the room key; the recovery key brings it back.
    let alice2 = recovery_client(&server).await;
    alice2
        .matrix_auth()
        .login_username("alice", "alice-password")
        .initial_device_display_name("new phone")
        .await
        .expect("login on a new device");
    let _sync2 = start_sync(&alice2).await;
    eventually("the new device sees the DM", || alice2.get_room(&dm_id).is_some()).await;
    alice2.encryption().recovery().recover(&recovery_key).await.expect("recover with the key");
    let alice2_tl = alice2.get_room(&dm_id).unwrap().timeline().await.expect("new device's timeline");
    wait_decrypted(&alice2_tl, "keep this for later").await;
}

/// Claims one-time keys of `who`'s devices as a stranger would, until the server hands
/// out the fallback key (every one-time key is gone); returns how many were claimed.
async fn drain_one_time_keys(c: &Client, who: &UserId, device: &matrix_sdk::ruma::DeviceId) -> usize {
    use matrix_sdk::ruma::{OneTimeKeyAlgorithm, api::client::keys::claim_keys};
    for claimed in 0..500 {
        let wanted = [(device.to_owned(), OneTimeKeyAlgorithm::SignedCurve25519)].into_iter().collect();
        let request = claim_keys::v3::Request::new([(who.to_owned(), wanted)].into_iter().collect());
        let response = c.send(request).await.expect("keys/claim");
        let keys = response.one_time_keys.get(who).and_then(|d| d.get(device)).expect("a key for the device");
        let fallback = keys.values().any(|k| k.json().get().contains("\"fallback\":true"));
        if fallback {
            return claimed;
        }
    }
    panic!("the server never handed out the fallback key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn element_x_offline_receiver_decrypts_after_restart_through_the_fallback_key() {
    let mut server = Server::start().await;
    let alice = register(&server, "alice").await;
    let carol = register(&server, "carol").await;
    let alice_sync = start_sync(&alice).await;
    let _carol_sync = start_sync(&carol).await;
    let alice_id = alice.user_id().unwrap().to_owned();
    let alice_device = alice.device_id().unwrap().to_owned();

    let dm = encrypted_dm(&carol, &alice).await;
    let dm_id = dm.room_id().to_owned();

    // Her client has uploaded its fallback key (a connection of its own asks the server).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        use matrix_sdk::ruma::{OneTimeKeyAlgorithm, api::client::sync::sync_events::v5};
        let mut probe = v5::Request::new();
        probe.conn_id = Some("fallback-probe".to_owned());
        probe.extensions.e2ee.enabled = Some(true);
        let answer = alice.send(probe).await.expect("sliding sync probe");
        let types = answer.extensions.e2ee.device_unused_fallback_key_types.unwrap_or_default();
        if types.contains(&OneTimeKeyAlgorithm::SignedCurve25519) {
            break;
        }
        assert!(Instant::now() < deadline, "alice's client never uploaded a fallback key");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Alice goes offline; a stranger takes every one-time key of her device.
    alice_sync.stop().await;
    let stranger = register(&server, "stranger").await;
    let drained = drain_one_time_keys(&stranger, &alice_id, &alice_device).await;
    assert!(drained > 0, "her device had one-time keys to take");

    // Carol writes: her client can only open a session with the fallback key. The room
    // key waits for Alice as a to-device message, across a hard restart of the server.
    say(&dm, "while you were away").await;
    server = server.restart().await;
    alice_sync.start().await;
    let alice_tl = alice.get_room(&dm_id).unwrap().timeline().await.expect("alice's timeline");
    wait_decrypted(&alice_tl, "while you were away").await;
    drop(server);
}
