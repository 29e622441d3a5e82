//! TLS for the federation listener.
//!
//! With `federation.tls_cert`/`tls_key` set, those PEM files are used. Without
//! them a self-signed certificate for the server name's host is generated on
//! first start into `<data_dir>/keys/tls.crt` + `tls.key` and reused (it is
//! part of the server's identity and of every backup).

use std::{path::Path, sync::Arc};

use myelin_engine::Config;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("federation TLS: {0}")]
pub struct TlsError(pub String);

/// The host part of a server name (`host`, `host:port`, `[v6]:port`).
pub fn server_host(server_name: &str) -> &str {
    myelin_engine::config_host(server_name)
}

/// Builds the rustls server configuration for the federation listener.
pub fn server_config(config: &Config) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (cert_path, key_path) = if config.federation.tls_cert.is_empty() {
        let dir = config.data_dir.join("keys");
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        if !cert.is_file() || !key.is_file() {
            generate_self_signed(server_host(&config.server_name), &cert, &key)?;
        }
        (cert, key)
    } else {
        (config.federation.tls_cert.clone().into(), config.federation.tls_key.clone().into())
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("reading certificate {}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{} holds no certificate", cert_path.display())));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| TlsError(format!("reading private key {}: {e}", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("certificate and key do not fit: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

fn generate_self_signed(host: &str, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let certified = rcgen::generate_simple_self_signed(vec![host.to_owned()])
        .map_err(|e| TlsError(format!("generating a self-signed certificate for {host}: {e}")))?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| TlsError(format!("creating {}: {e}", dir.display())))?;
    }
    write_file(key_path, certified.signing_key.serialize_pem().as_bytes(), true)?;
    write_file(cert_path, certified.cert.pem().as_bytes(), false)?;
    tracing::info!(host, cert = %cert_path.display(), "generated a self-signed federation TLS certificate");
    Ok(())
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(|e| TlsError(format!("creating {}: {e}", path.display())))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| TlsError(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_server_names() {
        assert_eq!(server_host("example.org"), "example.org");
        assert_eq!(server_host("example.org:8448"), "example.org");
        assert_eq!(server_host("127.0.0.1:8448"), "127.0.0.1");
        assert_eq!(server_host("[::1]:8448"), "::1");
        assert_eq!(server_host("[::1]"), "::1");
    }
}
