//! Registration tokens (Synapse admin API §"Registration Tokens"): list,
//! show, create, update and delete the tokens that registration takes in its
//! `m.login.registration_token` stage (see `myelin_engine::registration_tokens`).
//!
//! As Synapse answers: every malformed field is 400 `M_INVALID_PARAM` naming
//! it; an unknown token is 404 `M_NOT_FOUND`; a token is 1 to 64 of
//! `[A-Za-z0-9._~-]`, generated (`length` characters, 16 by default) when
//! none is given; `expiry_time` may not be in the past.

use myelin_engine::{
    registration_tokens::{MAX_TOKEN_CHARS, TokenError, TokenInfo, well_formed},
    util::now_ms,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{audit, query_bool, require_admin};
use crate::{
    error::ApiError,
    http_util::{ok_empty, ok_json, parse_json_or_empty},
    router::{Ctx, HandlerFuture, Req},
};

/// A token as Synapse shows it.
#[derive(Serialize)]
struct Shown<'a> {
    token: &'a str,
    uses_allowed: Option<u64>,
    pending: u64,
    completed: u64,
    expiry_time: Option<u64>,
}

/// The answer of `GET v1/registration_tokens`.
#[derive(Serialize)]
struct TokenList<'a> {
    registration_tokens: Vec<Shown<'a>>,
}

fn shown<'a>(token: &'a str, info: &TokenInfo) -> Shown<'a> {
    Shown {
        token,
        uses_allowed: info.uses_allowed,
        pending: info.pending,
        completed: info.completed,
        expiry_time: info.expiry_time,
    }
}

/// A field that may be absent (`None`), `null` (`Some(Value::Null)`) or a value.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The body of `POST …/registration_tokens/new` (and, without `token` and `length`, of `PUT`).
#[derive(Deserialize, Default)]
pub(crate) struct TokenBody {
    #[serde(default, deserialize_with = "present")]
    token: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    uses_allowed: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    expiry_time: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    length: Option<Value>,
}

/// `uses_allowed`: absent, `null` (unlimited) or a non-negative integer.
fn uses_allowed(v: &Option<Value>) -> Result<Option<Option<u64>>, ApiError> {
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => v
            .as_u64()
            .map(|n| Some(Some(n)))
            .ok_or_else(|| ApiError::invalid_param("uses_allowed must be a non-negative integer or null")),
    }
}

/// `expiry_time`: absent, `null` (never) or a time in ms not in the past.
fn expiry_time(v: &Option<Value>) -> Result<Option<Option<u64>>, ApiError> {
    match v {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => {
            let t = v.as_u64().ok_or_else(|| ApiError::invalid_param("expiry_time must be an integer or null"))?;
            if t < now_ms() {
                return Err(ApiError::invalid_param("expiry_time must not be in the past"));
            }
            Ok(Some(Some(t)))
        }
    }
}

/// A fresh token of `length` characters from `[A-Za-z0-9]`.
fn generate(length: usize) -> Result<String, ApiError> {
    use ring::rand::SecureRandom;
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = vec![0u8; length];
    ring::rand::SystemRandom::new().fill(&mut raw).map_err(|_| ApiError::unknown("no system randomness"))?;
    // 256 is 4 × 62 + 8: the bias toward the first 8 characters is under 2 %.
    Ok(raw.iter().map(|b| CHARS[usize::from(*b) % CHARS.len()] as char).collect())
}

fn not_found(token: &str) -> ApiError {
    ApiError::not_found(format!("No such registration token: {token}"))
}

fn refused(e: TokenError) -> ApiError {
    match e {
        TokenError::NotFound => ApiError::not_found(e.to_string()),
        TokenError::Exists | TokenError::TooMany => ApiError::invalid_param(e.to_string()),
    }
}

/// GET /_synapse/admin/v1/registration_tokens
pub fn list(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let valid = query_bool(&req, "valid")?;
        let tokens = cx.engine.registration_tokens.list(valid)?;
        let registration_tokens: Vec<Shown> = tokens.iter().map(|(t, i)| shown(t, i)).collect();
        Ok(ok_json(&TokenList { registration_tokens }))
    })
}

/// GET /_synapse/admin/v1/registration_tokens/{token}
pub fn get(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        require_admin(&cx, &req)?;
        let token = req.param("token")?;
        let info = cx.engine.registration_tokens.get(token)?.ok_or_else(|| not_found(token))?;
        Ok(ok_json(&shown(token, &info)))
    })
}

/// POST /_synapse/admin/v1/registration_tokens/new
pub fn create(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let body: TokenBody = parse_json_or_empty(&req.body)?;
        let token = match &body.token {
            None | Some(Value::Null) => {
                let length = match &body.length {
                    None | Some(Value::Null) => 16,
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| (1..=MAX_TOKEN_CHARS).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid_param(format!(
                                "length must be an integer between 1 and {MAX_TOKEN_CHARS}"
                            ))
                        })?,
                };
                generate(length)?
            }
            Some(Value::String(t)) if well_formed(t) => t.clone(),
            Some(_) => {
                return Err(ApiError::invalid_param(format!(
                    "token must consist only of characters matched by the regex [A-Za-z0-9._~-] and be at most {MAX_TOKEN_CHARS} characters"
                )));
            }
        };
        let uses = uses_allowed(&body.uses_allowed)?.flatten();
        let expiry = expiry_time(&body.expiry_time)?.flatten();
        let info = cx.engine.registration_tokens.create(&token, uses, expiry).await?.map_err(refused)?;
        audit(&me, "create_registration_token", &token);
        Ok(ok_json(&shown(&token, &info)))
    })
}

/// PUT /_synapse/admin/v1/registration_tokens/{token}
pub fn update(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let token = req.param("token")?.to_owned();
        let body: TokenBody = parse_json_or_empty(&req.body)?;
        let uses = uses_allowed(&body.uses_allowed)?;
        let expiry = expiry_time(&body.expiry_time)?;
        let info = match cx.engine.registration_tokens.update(&token, uses, expiry).await? {
            Ok(info) => info,
            Err(TokenError::NotFound) => return Err(not_found(&token)),
            Err(e) => return Err(refused(e)),
        };
        audit(&me, "update_registration_token", &token);
        Ok(ok_json(&shown(&token, &info)))
    })
}

/// DELETE /_synapse/admin/v1/registration_tokens/{token}
pub fn delete(cx: Ctx, req: Req) -> HandlerFuture {
    Box::pin(async move {
        let me = require_admin(&cx, &req)?;
        let token = req.param("token")?.to_owned();
        if !cx.engine.registration_tokens.delete(&token).await? {
            return Err(not_found(&token));
        }
        audit(&me, "delete_registration_token", &token);
        Ok(ok_empty())
    })
}
