//! Operator endpoints: Prometheus metrics and a liveness check.

use http::StatusCode;

use crate::{
    http_util::text_response,
    router::{Ctx, HandlerFuture, Req},
};

/// GET /metrics: Prometheus text exposition.
pub fn metrics(_cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move {
        let body = crate::metrics::handle().map(|h| h.render()).unwrap_or_default();
        Ok(text_response(StatusCode::OK, "text/plain; version=0.0.4", body))
    })
}

/// GET /health
pub fn health(_cx: Ctx, _req: Req) -> HandlerFuture {
    Box::pin(async move { Ok(text_response(StatusCode::OK, "text/plain", "OK")) })
}
