//! TLS with rustls: a server per replica with its own self-signed certificate (rcgen), and
//! a client that verifies it and reports what it saw.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::{accept_loop, bounded, Failed, IO_TIMEOUT};

/// A server's self-signed certificate for `names`, and its key.
pub struct Identity {
    /// The certificate, which clients also trust as its own root.
    pub cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// A fresh key and a self-signed certificate for `names`.
    pub fn new(names: &[&str]) -> Identity {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(ToString::to_string).collect::<Vec<_>>(),
        )
        .expect("self-signed certificate");
        Identity {
            cert: c.cert.der().clone(),
            key: PrivateKeyDer::try_from(c.signing_key.serialize_der()).expect("private key"),
        }
    }
}

/// Serves TLS on `listener` with `identity`: per connection it reads one line and answers
/// `<name> <SNI it received> <the line>` and closes.
pub fn serve_tls(listener: TcpListener, name: &str, identity: &Identity) {
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let name: Arc<str> = name.into();
    accept_loop(listener, move |s| {
        let (acceptor, name) = (acceptor.clone(), name.clone());
        async move {
            let Ok(Ok(mut tls)) = tokio::time::timeout(IO_TIMEOUT, acceptor.accept(s)).await else {
                return;
            };
            let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
            let Ok(line) = read_line(&mut tls).await else {
                return;
            };
            let reply = format!("{name} {sni} {line}");
            let _ = tls.write_all(reply.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
}

async fn read_line(s: &mut (impl AsyncRead + Unpin)) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 4096 {
        let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut byte)).await??;
        if n == 0 || byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// What a TLS client saw.
#[derive(Debug)]
pub struct TlsExchange {
    /// The certificate the server presented (verified against the trusted ones).
    pub peer_cert: CertificateDer<'static>,
    /// The server's answer.
    pub reply: String,
}

/// A TLS handshake over `stream` with SNI `sni`, trusting only `trusted`, then `line` sent
/// and the answer read to the server's close.
pub async fn tls_exchange(
    stream: TcpStream,
    sni: &str,
    trusted: &[CertificateDer<'static>],
    line: &str,
) -> Result<TlsExchange, Failed> {
    let mut roots = RootCertStore::empty();
    for c in trusted {
        roots.add(c.clone()).map_err(|e| e.to_string())?;
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = bounded("TLS handshake", connector.connect(name, stream)).await?;
    let peer_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no server certificate")?;
    bounded("TLS write", tls.write_all(format!("{line}\n").as_bytes())).await?;
    let mut reply = Vec::new();
    bounded("TLS read", tls.read_to_end(&mut reply)).await?;
    Ok(TlsExchange {
        peer_cert,
        reply: String::from_utf8_lossy(&reply).into_owned(),
    })
}
