//! `myelin bench`: runs one scenario of [`crate::bench`] and prints its report.

use crate::{Failure, bench, cli::BenchCommand, runtime};

pub(super) fn bench_cmd(what: BenchCommand) -> Result<(), Failure> {
    let rt = runtime()?;
    match what {
        BenchCommand::SynapseDb { database, server_name, signing_key, rooms, members, events } => {
            let started = std::time::Instant::now();
            let g = crate::bench_synapse_db::generate(&database, &server_name, &signing_key, rooms, members, events)
                .map_err(Failure::runtime)?;
            println!(
                "generated {} rooms, {} events, {} users in {:.1} s",
                g.rooms,
                g.events,
                g.users,
                started.elapsed().as_secs_f64()
            );
        }
        BenchCommand::Send { url, rooms, clients, messages, json } => {
            let r = rt.block_on(bench::send(&url, rooms, clients, messages)).map_err(Failure::runtime)?;
            let rate = r.events as f64 / r.elapsed.as_secs_f64().max(1e-9);
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "send", "url": url, "rooms": rooms, "clients": clients,
                        "events": r.events, "seconds": r.elapsed.as_secs_f64(), "events_per_second": rate,
                        "p50_ms": ms(r.p50), "p95_ms": ms(r.p95), "p99_ms": ms(r.p99), "readable": r.readable,
                    })
                );
            } else {
                println!("| scenario | events | events/s | p50 ms | p95 ms | p99 ms | readable |");
                println!("|---|---|---|---|---|---|---|");
                println!(
                    "| send, {rooms} room(s), {clients} clients | {} | {rate:.0} | {:.1} | {:.1} | {:.1} | {}/{} |",
                    r.events,
                    ms(r.p50),
                    ms(r.p95),
                    ms(r.p99),
                    r.readable,
                    r.events
                );
            }
            if r.readable != r.events {
                return Err(Failure::runtime(format!(
                    "{} acknowledged events are not readable",
                    r.events - r.readable
                )));
            }
        }
        BenchCommand::Fanout { url, receivers, messages, json } => {
            let r = rt.block_on(bench::fanout(&url, receivers, messages)).map_err(Failure::runtime)?;
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "fanout", "url": url, "receivers": receivers, "messages": messages,
                        "delivered": r.delivered, "expected": r.expected,
                        "p50_ms": ms(r.p50), "p95_ms": ms(r.p95), "p99_ms": ms(r.p99),
                    })
                );
            } else {
                println!("| scenario | delivered | p50 ms | p95 ms | p99 ms |");
                println!("|---|---|---|---|---|");
                println!(
                    "| sync fan-out, {receivers} receivers | {}/{} | {:.1} | {:.1} | {:.1} |",
                    r.delivered,
                    r.expected,
                    ms(r.p50),
                    ms(r.p95),
                    ms(r.p99)
                );
            }
            if r.delivered != r.expected {
                return Err(Failure::runtime(format!("{} of {} deliveries seen", r.delivered, r.expected)));
            }
        }
        BenchCommand::Federation { url_a, url_b, server_a, messages, senders, json } => {
            let r = rt
                .block_on(bench::federation(&url_a, &url_b, &server_a, messages, senders))
                .map_err(Failure::runtime)?;
            let rate = r.received as f64 / r.elapsed.as_secs_f64().max(1e-9);
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "federation", "senders": senders, "sent": r.sent, "received": r.received,
                        "seconds": r.elapsed.as_secs_f64(), "messages_per_second": rate,
                        "p50_ms": ms(r.p50), "p99_ms": ms(r.p99), "only_in_history": r.only_in_history,
                        "last_sent_ms": ms(r.last_sent), "first_arrival_ms": ms(r.first_arrival),
                    })
                );
            } else {
                println!("| scenario | received | msgs/s end to end | p50 ms | p99 ms |");
                println!("|---|---|---|---|---|");
                println!(
                    "| federation burst | {}/{} | {rate:.0} | {:.1} | {:.1} |",
                    r.received,
                    r.sent,
                    ms(r.p50),
                    ms(r.p99)
                );
            }
            if r.received != r.sent {
                return Err(Failure::runtime(format!(
                    "{} of {} messages arrived in /sync ({} more are in the room's history only)",
                    r.received, r.sent, r.only_in_history
                )));
            }
        }
        BenchCommand::Join { url_a, url_b, server_a, members, json } => {
            let r = rt.block_on(bench::join(&url_a, &url_b, &server_a, members)).map_err(Failure::runtime)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "join", "members": r.members, "seconds": r.elapsed.as_secs_f64(),
                        "join_request_seconds": r.join_request.as_secs_f64(),
                    })
                );
            } else {
                println!("| scenario | members | seconds until all listed | of which the join request |");
                println!("|---|---|---|---|");
                println!(
                    "| federated join | {} | {:.2} | {:.2} |",
                    r.members,
                    r.elapsed.as_secs_f64(),
                    r.join_request.as_secs_f64()
                );
            }
        }
        BenchCommand::Script { url, lines, json } => {
            let t = rt.block_on(bench::script(&url, lines)).map_err(Failure::runtime)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "scenario": "script", "url": url, "lines": lines, "seconds": t.as_secs_f64() })
                );
            } else {
                println!("| scenario | lines | seconds |");
                println!("|---|---|---|");
                println!("| sequential script | {lines} | {:.2} |", t.as_secs_f64());
            }
        }
        BenchCommand::Soak { url, as_token, users, rooms, events, clients, pid } => {
            let r = rt
                .block_on(crate::bench_soak::soak(&url, &as_token, users, rooms, events, clients, pid))
                .map_err(Failure::runtime)?;
            println!("{}", r.to_json());
            if r.readable != r.events {
                return Err(Failure::runtime(format!(
                    "{} acknowledged events were not read back exactly once",
                    r.events - r.readable
                )));
            }
        }
        BenchCommand::Sliding { url, rooms, big, members, window, samples, pid, json } => {
            let r = rt
                .block_on(crate::bench_sliding::sliding(&url, rooms, big, members, window, samples, pid))
                .map_err(Failure::runtime)?;
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "sliding", "url": url, "rooms": rooms, "big": big, "members": members,
                        "window": window, "samples": samples, "count": r.count,
                        "first_p50_ms": ms(r.first.0), "first_p99_ms": ms(r.first.1),
                        "incremental_p50_ms": ms(r.incremental.0), "incremental_p99_ms": ms(r.incremental.1),
                        "rss_before_kib": r.rss_kib.map(|m| m.0), "rss_after_kib": r.rss_kib.map(|m| m.1),
                        "peak_rss_kib": r.peak_rss_kib,
                    })
                );
            } else {
                println!(
                    "| scenario | rooms (big × members) | first p50 ms | first p99 ms | incremental p50 ms | incremental p99 ms |"
                );
                println!("|---|---|---|---|---|---|");
                println!(
                    "| sliding sync, window {window} | {rooms} ({big} × {members}) | {:.1} | {:.1} | {:.1} | {:.1} |",
                    ms(r.first.0),
                    ms(r.first.1),
                    ms(r.incremental.0),
                    ms(r.incremental.1)
                );
            }
        }
        BenchCommand::Appservice { url, listen, hs_token, rooms, clients, messages, json } => {
            let r = rt
                .block_on(crate::bench_appservice::appservice(&url, listen, &hs_token, rooms, clients, messages))
                .map_err(Failure::runtime)?;
            let send_rate = r.sent as f64 / r.send_elapsed.as_secs_f64().max(1e-9);
            let deliver_rate = r.delivered as f64 / r.deliver_elapsed.as_secs_f64().max(1e-9);
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "appservice", "url": url, "rooms": rooms, "clients": clients,
                        "sent": r.sent, "delivered": r.delivered, "transactions": r.transactions,
                        "send_events_per_second": send_rate, "delivered_events_per_second": deliver_rate,
                        "p50_ms": ms(r.p50), "p99_ms": ms(r.p99),
                    })
                );
            } else {
                println!("| scenario | sent | delivered | txns | send/s | delivered/s | p50 ms | p99 ms |");
                println!("|---|---|---|---|---|---|---|---|");
                println!(
                    "| appservice, {rooms} rooms, {clients} clients | {} | {} | {} | {send_rate:.0} | {deliver_rate:.0} | {:.1} | {:.1} |",
                    r.sent,
                    r.delivered,
                    r.transactions,
                    ms(r.p50),
                    ms(r.p99)
                );
            }
            if r.delivered != r.sent {
                return Err(Failure::runtime(format!(
                    "{} acknowledged events never reached the appservice",
                    r.sent - r.delivered
                )));
            }
        }
        BenchCommand::Keys { url_a, url_b, server_b, users, claim, to_device, receivers, samples, json } => {
            let sizes = crate::bench_keys::KeysSizes { users, claim, to_device, receivers, samples };
            let r =
                rt.block_on(crate::bench_keys::keys(&url_a, &url_b, &server_b, &sizes)).map_err(Failure::runtime)?;
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            let expected = to_device.div_ceil(receivers.clamp(1, users.max(1))) * receivers.clamp(1, users.max(1));
            let rate = r.delivered as f64 / r.to_device_elapsed.as_secs_f64().max(1e-9);
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "keys", "users": users, "claim": claim, "receivers": receivers,
                        "query_first_ms": ms(r.query_first), "query_p50_ms": ms(r.query.0), "query_p99_ms": ms(r.query.1),
                        "claim_p50_ms": ms(r.claim.0), "claim_p99_ms": ms(r.claim.1),
                        "to_device_expected": expected, "to_device_delivered": r.delivered,
                        "to_device_duplicates": r.duplicates, "to_device_seconds": r.to_device_elapsed.as_secs_f64(),
                        "to_device_send_seconds": r.to_device_send.as_secs_f64(), "to_device_per_second": rate,
                        "to_device_p50_ms": ms(r.to_device_latency.0), "to_device_p99_ms": ms(r.to_device_latency.1),
                    })
                );
            } else {
                println!("| scenario | first ms | p50 ms | p99 ms | other |");
                println!("|---|---|---|---|---|");
                println!(
                    "| /keys/query, {users} users | {:.1} | {:.1} | {:.1} | |",
                    ms(r.query_first),
                    ms(r.query.0),
                    ms(r.query.1)
                );
                println!("| /keys/claim, {claim} devices | | {:.1} | {:.1} | |", ms(r.claim.0), ms(r.claim.1));
                println!(
                    "| to-device, {expected} to {receivers} devices | | {:.1} | {:.1} | {}/{expected} in {:.2} s, {rate:.0}/s |",
                    ms(r.to_device_latency.0),
                    ms(r.to_device_latency.1),
                    r.delivered,
                    r.to_device_elapsed.as_secs_f64()
                );
            }
            if r.delivered != expected || r.duplicates > 0 {
                return Err(Failure::runtime(format!(
                    "{} of {expected} to-device messages arrived, {} more than once",
                    r.delivered, r.duplicates
                )));
            }
        }
        BenchCommand::Push { url, listen, receivers, senders, messages, json } => {
            let r = rt
                .block_on(crate::bench_push::push(&url, listen, receivers, senders, messages))
                .map_err(Failure::runtime)?;
            let rate = r.delivered as f64 / r.elapsed.as_secs_f64().max(1e-9);
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "scenario": "push", "url": url, "receivers": receivers, "senders": senders,
                        "expected": r.expected, "delivered": r.delivered, "duplicates": r.duplicates,
                        "seconds": r.elapsed.as_secs_f64(), "pushes_per_second": rate,
                        "p50_ms": ms(r.p50), "p99_ms": ms(r.p99),
                    })
                );
            } else {
                println!("| scenario | delivered | pushes/s | p50 ms | p99 ms |");
                println!("|---|---|---|---|---|");
                println!(
                    "| push, {receivers} pushers, {senders} senders | {}/{} | {rate:.0} | {:.1} | {:.1} |",
                    r.delivered,
                    r.expected,
                    ms(r.p50),
                    ms(r.p99)
                );
            }
            if r.delivered != r.expected {
                return Err(Failure::runtime(format!(
                    "{} of {} notifications reached the gateway",
                    r.delivered, r.expected
                )));
            }
        }
    }
    Ok(())
}
