//! `myelin admin`: the user, federation, room and media subcommands, each one
//! request to the running server's admin socket or, with none, to the opened data directory.

use std::path::PathBuf;

use myelin_engine::{Config, Engine};

use crate::{
    Failure,
    cli::{AppserviceCommand, FederationCommand, MediaCommand, RoomCommand, UserCommand},
    load_config, runtime,
};

fn generated_password() -> Result<String, Failure> {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut raw).map_err(|_| Failure::runtime("no system randomness"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

pub(super) fn user_cmd(what: UserCommand, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let mut shown_password = None;
    let request = match what {
        UserCommand::Create { name, password, admin } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let p = generated_password()?;
                    shown_password = Some(p.clone());
                    p
                }
            };
            serde_json::json!({ "op": "user_create", "name": name, "password": password, "admin": admin })
        }
        UserCommand::ResetPassword { name, password } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let p = generated_password()?;
                    shown_password = Some(p.clone());
                    p
                }
            };
            serde_json::json!({ "op": "user_reset_password", "name": name, "password": password })
        }
        UserCommand::SetAdmin { name, off } => {
            serde_json::json!({ "op": "user_set_admin", "name": name, "admin": !off })
        }
        UserCommand::List => serde_json::json!({ "op": "user_list" }),
        UserCommand::Deactivate { name } => serde_json::json!({ "op": "user_deactivate", "name": name }),
    };
    let rt = runtime()?;
    let answer = rt.block_on(async {
        match myelin_api::admin::request(&config.data_dir, &request).await.map_err(Failure::runtime)? {
            Some(answer) => Ok::<_, Failure>(answer),
            None => {
                // No running server: open the data directory ourselves.
                let engine = tokio::task::spawn_blocking(move || Engine::open(config))
                    .await
                    .map_err(|e| Failure::runtime(e.to_string()))??;
                let answer = myelin_api::admin::execute_offline(&engine, &request).await;
                engine.shutdown();
                Ok(answer)
            }
        }
    })?;
    if answer.get("ok").and_then(|v| v.as_bool()) != Some(true) {
        let error = answer.get("error").and_then(|v| v.as_str()).unwrap_or("unknown error");
        return Err(Failure::usage(error.to_owned()));
    }
    if let Some(users) = answer.get("users").and_then(|u| u.as_array()) {
        for u in users {
            let flags = match (u["admin"].as_bool(), u["deactivated"].as_bool()) {
                (Some(true), _) => " admin",
                (_, Some(true)) => " deactivated",
                _ => "",
            };
            println!("{}{flags}", u["user_id"].as_str().unwrap_or_default());
        }
    } else if let Some(left) = answer.get("rooms_left").and_then(|n| n.as_u64()) {
        println!("{} deactivated; left {left} rooms", answer["user_id"].as_str().unwrap_or_default());
    } else if let (Some(user), Some(admin)) =
        (answer.get("user_id").and_then(|u| u.as_str()), answer.get("admin").and_then(|a| a.as_bool()))
    {
        println!("{user} {}", if admin { "is now a server admin" } else { "is no longer a server admin" });
    } else if let Some(user) = answer.get("user_id").and_then(|u| u.as_str()) {
        match shown_password {
            Some(p) => println!("{user} password: {p}"),
            None => println!("{user}"),
        }
    }
    Ok(())
}

/// Sends one admin request to the running server, or runs it on the opened data directory.
fn admin_call(config: Config, request: &serde_json::Value) -> Result<serde_json::Value, Failure> {
    let rt = runtime()?;
    let answer = rt.block_on(async {
        match myelin_api::admin::request(&config.data_dir, request).await.map_err(Failure::runtime)? {
            Some(answer) => Ok::<_, Failure>(answer),
            None => {
                let engine = tokio::task::spawn_blocking(move || Engine::open(config))
                    .await
                    .map_err(|e| Failure::runtime(e.to_string()))??;
                let answer = myelin_api::admin::execute_offline(&engine, request).await;
                engine.shutdown();
                Ok(answer)
            }
        }
    })?;
    if answer.get("ok").and_then(|v| v.as_bool()) != Some(true) {
        let error = answer.get("error").and_then(|v| v.as_str()).unwrap_or("unknown error");
        return Err(Failure::usage(error.to_owned()));
    }
    Ok(answer)
}

pub(super) fn federation_cmd(what: FederationCommand, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let request = match &what {
        FederationCommand::Allow { server } => serde_json::json!({ "op": "federation_allow", "server": server }),
        FederationCommand::Deny { server } => serde_json::json!({ "op": "federation_deny", "server": server }),
        FederationCommand::Remove { server } => serde_json::json!({ "op": "federation_remove", "server": server }),
        FederationCommand::List => serde_json::json!({ "op": "federation_list" }),
        FederationCommand::Queue => serde_json::json!({ "op": "federation_queue" }),
    };
    let answer = admin_call(config, &request)?;
    match what {
        FederationCommand::List => {
            for e in answer["entries"].as_array().into_iter().flatten() {
                println!(
                    "{} {} ({})",
                    e["list"].as_str().unwrap_or_default(),
                    e["server"].as_str().unwrap_or_default(),
                    e["source"].as_str().unwrap_or_default()
                );
            }
        }
        FederationCommand::Queue => {
            println!(
                "{:<40} {:>8} {:>12} {:<8} {:>14}",
                "destination", "depth", "oldest_age_s", "state", "failing_for_s"
            );
            for d in answer["destinations"].as_array().into_iter().flatten() {
                let num = |k: &str| d[k].as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
                println!(
                    "{:<40} {:>8} {:>12} {:<8} {:>14}",
                    d["destination"].as_str().unwrap_or_default(),
                    num("depth"),
                    num("oldest_age_s"),
                    d["state"].as_str().unwrap_or_default(),
                    num("failing_for_s")
                );
            }
            for (origin, n) in answer["pending_pdus"].as_object().into_iter().flatten() {
                println!("inbound from {origin}: {n} event(s) wait for auth events");
            }
        }
        FederationCommand::Allow { server } => println!("allowed {server}"),
        FederationCommand::Deny { server } => println!("denied {server}"),
        FederationCommand::Remove { server } => println!("removed {server}"),
    }
    Ok(())
}
pub(super) fn appservice_cmd(what: AppserviceCommand, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let request = match &what {
        AppserviceCommand::Add { file } => {
            let yaml = std::fs::read_to_string(file)
                .map_err(|e| Failure::usage(format!("cannot read {}: {e}", file.display())))?;
            serde_json::json!({ "op": "appservice_add", "registration": yaml })
        }
        AppserviceCommand::List => serde_json::json!({ "op": "appservice_list" }),
        AppserviceCommand::Remove { id } => serde_json::json!({ "op": "appservice_remove", "id": id }),
    };
    let answer = admin_call(config, &request)?;
    match what {
        AppserviceCommand::Add { .. } => println!(
            "registered appservice {} (sender {})",
            answer["id"].as_str().unwrap_or_default(),
            answer["sender"].as_str().unwrap_or_default()
        ),
        AppserviceCommand::List => {
            for e in answer["entries"].as_array().into_iter().flatten() {
                println!(
                    "{} {} url={} queued={} ({})",
                    e["id"].as_str().unwrap_or_default(),
                    e["sender"].as_str().unwrap_or_default(),
                    e["url"].as_str().unwrap_or("none"),
                    e["queued"].as_u64().unwrap_or(0),
                    e["source"].as_str().unwrap_or_default()
                );
            }
        }
        AppserviceCommand::Remove { id } => println!("removed appservice {id}"),
    }
    Ok(())
}

pub(super) fn room_cmd(what: RoomCommand, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let RoomCommand::Shutdown { room_id } = what;
    // Offline, the leaves wait in the federation queue until the next start.
    let answer = admin_call(config, &serde_json::json!({ "op": "room_shutdown", "room_id": room_id }))?;
    println!("{room_id} shut down; {} local users removed", answer["users_removed"].as_u64().unwrap_or(0));
    Ok(())
}

fn parse_duration_ms(text: &str) -> Result<u64, Failure> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 =
        number.parse().map_err(|_| Failure::usage(format!("bad duration `{text}`: expected e.g. 30d, 12h")))?;
    let factor = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" | "" => 1_000,
        other => return Err(Failure::usage(format!("bad duration unit `{other}`: use d, h, m or s"))),
    };
    Ok(n.saturating_mul(factor))
}

pub(super) fn media_cmd(what: MediaCommand, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let request = match &what {
        MediaCommand::Delete { mxc } => serde_json::json!({ "op": "media_delete", "mxc": mxc }),
        MediaCommand::PurgeRemote { older_than } => {
            serde_json::json!({ "op": "media_purge_remote", "older_than_ms": parse_duration_ms(older_than)? })
        }
    };
    let answer = admin_call(config, &request)?;
    match what {
        MediaCommand::Delete { mxc } => println!("deleted {mxc}"),
        MediaCommand::PurgeRemote { .. } => {
            println!("purged {} remote media items", answer["purged"].as_u64().unwrap_or(0))
        }
    }
    Ok(())
}

pub(super) fn storage_cmd(compact: bool, json: bool, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let answer = admin_call(config, &serde_json::json!({ "op": "storage_stats", "compact": compact }))?;
    if json {
        println!("{answer}");
        return Ok(());
    }
    let events = answer["events"].as_u64().unwrap_or(0);
    let sst = answer["sst_bytes"].as_u64().unwrap_or(0);
    println!("{:<32} {:>14} {:>12}", "family", "bytes", "keys");
    for f in answer["families"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:>14} {:>12}",
            f["name"].as_str().unwrap_or_default(),
            f["sst_bytes"].as_u64().unwrap_or(0),
            f["keys"].as_u64().unwrap_or(0)
        );
    }
    println!("{:<32} {:>14} {:>12}", "total", sst, "");
    if let Some(per_event) = sst.checked_div(events) {
        println!("{events} events stored: {per_event} bytes per event");
    }
    Ok(())
}
