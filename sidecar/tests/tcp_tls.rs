//! Opaque TCP (with half-close) and TLS passthrough by SNI through the sidecar.

mod common;

use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server that reads to EOF, then writes everything back and closes.
async fn echo_after_eof() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() {
                    let _ = s.write_all(&buf).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn raw_tcp_with_half_close_reaches_a_service_endpoint() {
    let echo = echo_after_eof().await;
    let running = sidecar(
        service_snapshot("db", "10.96.0.20", 7000, "tcp", &[echo], "p2c"),
        |c| {
            c.default_target = Some("10.96.0.20:7000".parse().unwrap());
        },
    )
    .await;
    for _ in 0..3 {
        let mut s = TcpStream::connect(running.addrs.outbound).await.unwrap();
        // Binary, not HTTP: the tcp hint skips detection anyway.
        s.write_all(b"\x00\x01binary payload\xff").await.unwrap();
        s.shutdown().await.unwrap(); // half-close: the echo answers only after EOF
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"\x00\x01binary payload\xff");
    }
    assert_eq!(settle(&running).await, 0);
    let (_, metrics) = admin_get(&running, "/metrics").await;
    let l = "direction=\"outbound\",service=\"default/db\",protocol=\"tcp\"";
    assert!(
        metrics.contains(&format!("netd_tcp_connections_opened_total{{{l}}} 3")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("netd_tcp_sent_bytes_total{{{l}}} 51")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("netd_tcp_received_bytes_total{{{l}}} 51")),
        "{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn detected_opaque_tcp_passes_through() {
    let echo = echo_after_eof().await;
    // No hint (not redirected, default target is a plain address): detection sees binary.
    let running = sidecar(web_snapshot("http", &[], "p2c"), |c| {
        c.default_target = Some(echo)
    })
    .await;
    let mut s = TcpStream::connect(running.addrs.outbound).await.unwrap();
    s.write_all(b"\x16not tls at all").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"\x16not tls at all");
    running.shutdown().await;
}

#[tokio::test]
async fn tls_is_passed_through_by_sni() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["secure".to_string()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key =
        tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .unwrap();
    let server_config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = [0u8; 5];
                    if tls.read_exact(&mut buf).await.is_ok() {
                        let _ = tls.write_all(b"hello over tls").await;
                        let _ = tls.shutdown().await;
                    }
                }
            });
        }
    });
    let running = sidecar(
        service_snapshot("secure", "10.96.0.30", 443, "tcp", &[backend_addr], "p2c"),
        |_| {},
    )
    .await;

    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let client_config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(running.addrs.outbound).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("secure").unwrap();
    // The handshake completes against the backend's certificate: the sidecar never
    // terminated TLS, it routed the ClientHello by its SNI.
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut back = Vec::new();
    tls.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"hello over tls");
    drop(tls);
    assert_eq!(settle(&running).await, 0);
    let (_, metrics) = admin_get(&running, "/metrics").await;
    assert!(
        metrics
            .contains("netd_detected_connections_total{direction=\"outbound\",protocol=\"tls\"} 1"),
        "{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn an_idle_opaque_connection_is_closed_and_an_active_one_is_not() {
    // An echo that answers each read at once and never closes by itself.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let running = sidecar(
        service_snapshot("db", "10.96.0.20", 7000, "tcp", &[echo], "p2c"),
        |c| {
            c.default_target = Some("10.96.0.20:7000".parse().unwrap());
            c.tcp_idle_timeout = std::time::Duration::from_secs(1);
        },
    )
    .await;
    let mut s = TcpStream::connect(running.addrs.outbound).await.unwrap();
    // Active for 2.5 s, a byte every 100 ms: more than twice the idle timeout, never idle.
    for i in 0..25u8 {
        s.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], i);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Then silent: the sidecar closes it (bounded wait, generous for a busy machine).
    let mut rest = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), s.read_to_end(&mut rest))
        .await
        .expect("an idle connection is closed by the sidecar");
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    assert_eq!(settle(&running).await, 0);
    let (_, metrics) = admin_get(&running, "/metrics").await;
    let l = "direction=\"outbound\",service=\"default/db\",protocol=\"tcp\"";
    assert!(
        metrics.contains(&format!("netd_tcp_idle_closed_total{{{l}}} 1")),
        "{metrics}"
    );
    // Its bytes are counted though it never ended by itself.
    for series in ["netd_tcp_sent_bytes_total", "netd_tcp_received_bytes_total"] {
        assert!(
            metrics.contains(&format!("{series}{{{l}}} 25")),
            "{series}: {metrics}"
        );
    }
    running.shutdown().await;

    // 0 means no idle timeout, and a timeout too far to represent is none either (it used to
    // close at once, or overflow the deadline).
    for timeout in [std::time::Duration::ZERO, std::time::Duration::MAX] {
        let running = sidecar(
            service_snapshot("db", "10.96.0.20", 7000, "tcp", &[echo], "p2c"),
            |c| {
                c.default_target = Some("10.96.0.20:7000".parse().unwrap());
                c.tcp_idle_timeout = timeout;
            },
        )
        .await;
        let mut s = TcpStream::connect(running.addrs.outbound).await.unwrap();
        s.write_all(b"a").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        s.write_all(b"b").await.unwrap();
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"b", "{timeout:?}");
        drop(s);
        assert_eq!(settle(&running).await, 0);
        running.shutdown().await;
    }
}
