//! Federation helpers: requests signed as one test server to another, and a
//! tiny TLS server that stands in for a remote host.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http::Method;
use myelin_engine::federation::xmatrix;

use crate::{Reply, TestServer, https_with};

/// A request to `to`'s federation listener, signed as `from` (names `*.test`).
pub async fn signed(
    from: &TestServer,
    to: &TestServer,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Reply {
    let (origin, dest) = (from.engine.server_name.as_str(), to.engine.server_name.as_str());
    let header = xmatrix::sign(&from.engine.keys, origin, dest, method.as_str(), path, body).unwrap();
    let bytes = body.map(|b| b.to_string());
    https_with(to.federation.unwrap(), method, path, bytes.as_deref().map(str::as_bytes), &[("authorization", &header)])
        .await
}

/// A GET to `to`'s federation listener, signed as `from`.
pub async fn signed_get(from: &TestServer, to: &TestServer, path: &str) -> Reply {
    signed(from, to, Method::GET, path, None).await
}

/// A PUT to `to`'s federation listener, signed as `from`.
pub async fn signed_put(from: &TestServer, to: &TestServer, path: &str, body: &serde_json::Value) -> Reply {
    signed(from, to, Method::PUT, path, Some(body)).await
}

/// A minimal TLS HTTP server on `bind` answering each path with `answer(path)`
/// = (status, content type, body); logs every requested path, in order.
pub async fn tiny_tls_server(
    bind: &str,
    tls: Arc<rustls::ServerConfig>,
    answer: impl Fn(&str) -> (u16, &'static str, Vec<u8>) + Send + Sync + 'static,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap_or_else(|e| panic!("binding {bind}: {e}"));
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let answer = Arc::new(answer);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, answer, log) = (acceptor.clone(), answer.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (answer, log) = (answer.clone(), log.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        log.lock().unwrap().push(path.clone());
                        let (status, content_type, body) = answer(&path);
                        let resp = http::Response::builder()
                            .status(status)
                            .header("content-type", content_type)
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen, task)
}
