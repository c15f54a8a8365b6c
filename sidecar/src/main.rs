//! `netd-sidecar`: parses flags, enters the namespace (before any thread or socket exists),
//! builds the runtime, starts the sidecar, reports readiness time, and drains on SIGTERM.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use netd_sidecar::cli::Args;

fn main() -> ExitCode {
    let started = Instant::now();
    let args = Args::parse();
    init_logging(&args);
    if let Some(ns) = &args.netns {
        if let Err(e) = netd_sidecar::netns::enter(ns) {
            eprintln!("netd-sidecar: {e}");
            return ExitCode::from(1);
        }
    }
    let runtime = if args.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.workers))
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netd-sidecar: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(args, started))
}

async fn run(args: Args, started: Instant) -> ExitCode {
    let running = match netd_sidecar::start(args.config()).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("netd-sidecar: {e}");
            return ExitCode::from(1);
        }
    };
    let mut changes = running.store.subscribe();
    while !running.store.is_loaded() {
        tokio::select! {
            _ = changes.changed() => {}
            _ = shutdown_signal() => return drain(running).await,
        }
    }
    tracing::info!(
        ready_us = started.elapsed().as_micros() as u64,
        outbound = %running.addrs.outbound,
        inbound = %shown(running.addrs.inbound),
        admin = %shown(running.addrs.admin),
        dns = %shown(running.addrs.dns.map(|d| d.udp)),
        ipv6 = ?running.addrs.companions,
        container_id = args.container_id.as_deref().unwrap_or(""),
        "ready"
    );
    shutdown_signal().await;
    drain(running).await
}

fn shown(addr: Option<std::net::SocketAddr>) -> String {
    addr.map(|a| a.to_string()).unwrap_or_default()
}

async fn drain(running: netd_sidecar::Running) -> ExitCode {
    tracing::info!("draining");
    if running.shutdown().await {
        tracing::info!("drained");
    } else {
        tracing::warn!("drain timeout: closing the remaining connections");
    }
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_logging(args: &Args) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(if args.access_log {
            args.log_level.max(tracing::Level::INFO)
        } else {
            args.log_level
        });
    if args.log_json || args.access_log {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(false).init();
    }
}
