//! SRV lookups over UDP, for server discovery.
//!
//! Server-Server API §"Resolving server names", steps 4–5: "If the
//! `/.well-known` request resulted in an error response, a server is found
//! by resolving an SRV record for `_matrix-fed._tcp.<hostname>`… the
//! `Host` header should be set to `<hostname>`", then the deprecated
//! `_matrix._tcp.<hostname>`, and only then the name itself on port 8448.
//!
//! A deliberately small stub resolver (RFC 1035 messages, RFC 2782 SRV):
//! one question, recursion desired, answered by the configured
//! `federation.dns_servers` or the `nameserver` lines of `/etc/resolv.conf`,
//! each tried twice with a 2 s timeout. Records are ordered by priority, then
//! by weight (largest first). A lone target of `.` means "no service here".

use std::{net::SocketAddr, time::Duration};

use tokio::net::UdpSocket;

/// One SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is tried first.
    pub priority: u16,
    /// Among equal priorities, larger is preferred.
    pub weight: u16,
    /// The port to connect to.
    pub port: u16,
    /// The host to connect to (no trailing dot).
    pub target: String,
}

/// Why a lookup gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// No resolver is configured or listed in `/etc/resolv.conf`.
    #[error("no DNS server configured")]
    NoServer,
    /// The name is not a valid DNS name.
    #[error("bad name {0}")]
    BadName(String),
    /// No resolver answered in time.
    #[error("no DNS answer: {0}")]
    NoAnswer(String),
    /// An answer could not be parsed.
    #[error("malformed DNS answer: {0}")]
    Malformed(&'static str),
}

const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;

/// The resolvers of `/etc/resolv.conf` (port 53).
pub fn system_servers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Looks up the SRV records of `name`, best first. An empty list: none exist.
pub async fn srv(name: &str, servers: &[SocketAddr]) -> Result<Vec<Srv>, DnsError> {
    if servers.is_empty() {
        return Err(DnsError::NoServer);
    }
    let id: u16 = {
        use ring::rand::SecureRandom;
        let mut raw = [0u8; 2];
        let _ = ring::rand::SystemRandom::new().fill(&mut raw);
        u16::from_be_bytes(raw)
    };
    let query = encode_query(id, name)?;
    let mut last = String::from("no server tried");
    for server in servers {
        for _ in 0..2 {
            match ask(*server, &query).await {
                Ok(answer) => match parse_answer(id, &answer) {
                    Ok(records) => return Ok(records),
                    Err(e) => last = format!("{server}: {e}"),
                },
                Err(e) => last = format!("{server}: {e}"),
            }
        }
    }
    Err(DnsError::NoAnswer(last))
}

async fn ask(server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, String> {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(|_| "bind")?;
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket.send(query).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    buf.truncate(n);
    Ok(buf)
}

/// A standard query for `name` / SRV / IN with recursion desired.
pub fn encode_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let mut out = Vec::with_capacity(name.len() + 18);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00]); // RD
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(DnsError::BadName(name.to_owned()));
        }
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&TYPE_SRV.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

fn u16_at(msg: &[u8], at: usize) -> Result<u16, DnsError> {
    msg.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or(DnsError::Malformed("short message"))
}

/// Reads a possibly compressed name at `at`; returns it and the offset after it.
fn read_name(msg: &[u8], mut at: usize) -> Result<(String, usize), DnsError> {
    let mut labels: Vec<String> = Vec::new();
    let mut end = None;
    for _ in 0..128 {
        let len = *msg.get(at).ok_or(DnsError::Malformed("name runs past the end"))?;
        match len {
            0 => {
                return Ok((labels.join("."), end.unwrap_or(at + 1)));
            }
            l if l & 0xC0 == 0xC0 => {
                let low = *msg.get(at + 1).ok_or(DnsError::Malformed("cut pointer"))?;
                end.get_or_insert(at + 2);
                at = (usize::from(l & 0x3F) << 8) | usize::from(low);
            }
            l => {
                let label = msg.get(at + 1..at + 1 + usize::from(l)).ok_or(DnsError::Malformed("cut label"))?;
                labels.push(String::from_utf8_lossy(label).into_owned());
                at += 1 + usize::from(l);
            }
        }
    }
    Err(DnsError::Malformed("name pointer loop"))
}

/// The SRV records of an answer to query `id`, best first.
pub fn parse_answer(id: u16, msg: &[u8]) -> Result<Vec<Srv>, DnsError> {
    if u16_at(msg, 0)? != id {
        return Err(DnsError::Malformed("answer to another query"));
    }
    let flags = u16_at(msg, 2)?;
    if flags & 0x8000 == 0 {
        return Err(DnsError::Malformed("not a response"));
    }
    match flags & 0x000F {
        0 => {}
        3 => return Ok(Vec::new()), // NXDOMAIN: no such name, so no records
        _ => return Err(DnsError::Malformed("server failure")),
    }
    let (questions, answers) = (u16_at(msg, 4)?, u16_at(msg, 6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = read_name(msg, at)?.1 + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        at = read_name(msg, at)?.1;
        let (kind, class) = (u16_at(msg, at)?, u16_at(msg, at + 2)?);
        let len = usize::from(u16_at(msg, at + 8)?);
        let data = at + 10;
        if msg.len() < data + len {
            return Err(DnsError::Malformed("record runs past the end"));
        }
        if kind == TYPE_SRV && class == CLASS_IN && len >= 7 {
            let (target, _) = read_name(msg, data + 6)?;
            out.push(Srv {
                priority: u16_at(msg, data)?,
                weight: u16_at(msg, data + 2)?,
                port: u16_at(msg, data + 4)?,
                target,
            });
        }
        at = data + len;
    }
    // RFC 2782: a single record with target "." means the service is not offered.
    if out.len() == 1 && out[0].target.is_empty() {
        return Ok(Vec::new());
    }
    out.retain(|r| !r.target.is_empty());
    out.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    Ok(out)
}

/// Builds an SRV answer to `query` (tests and the test kit's fake resolver use it).
pub fn encode_answer(query: &[u8], records: &[Srv]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(query.get(0..2).unwrap_or(&[0, 0]));
    out.extend_from_slice(&[0x81, 0x80]); // response, RD, RA, no error
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(query.get(12..).unwrap_or_default());
    for r in records {
        out.extend_from_slice(&[0xC0, 12]); // the question's name
        out.extend_from_slice(&TYPE_SRV.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&300u32.to_be_bytes());
        let mut data = Vec::new();
        data.extend_from_slice(&r.priority.to_be_bytes());
        data.extend_from_slice(&r.weight.to_be_bytes());
        data.extend_from_slice(&r.port.to_be_bytes());
        for label in r.target.split('.').filter(|l| !l.is_empty()) {
            data.push(label.len() as u8);
            data.extend_from_slice(label.as_bytes());
        }
        data.push(0);
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_sorted_and_dot_means_none() {
        let q = encode_query(7, "_matrix-fed._tcp.example.org").unwrap();
        let recs = vec![
            Srv { priority: 20, weight: 0, port: 1, target: "late.example".into() },
            Srv { priority: 10, weight: 5, port: 2, target: "light.example".into() },
            Srv { priority: 10, weight: 50, port: 3, target: "heavy.example".into() },
        ];
        let got = parse_answer(7, &encode_answer(&q, &recs)).unwrap();
        let order: Vec<u16> = got.iter().map(|r| r.port).collect();
        assert_eq!(order, vec![3, 2, 1]);
        let none = vec![Srv { priority: 0, weight: 0, port: 0, target: String::new() }];
        assert!(parse_answer(7, &encode_answer(&q, &none)).unwrap().is_empty());
        assert!(parse_answer(8, &encode_answer(&q, &recs)).is_err(), "another query's answer");
        assert!(parse_answer(7, &encode_answer(&q, &recs)[..20]).is_err(), "truncated");
        assert!(encode_query(1, "a..b").is_err());
    }
}
