//! Listeners: accept → TLS (SNI, ALPN) → hyper (HTTP/1.1 with upgrades, h2) → `handle`, and
//! the admin listener. Shutdown stops accepting, lets in-flight requests finish within the
//! grace period, then flushes the audit trail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::framing::Watched;
use super::{handle, ConnInfo, Gateway, Stopping};
use crate::audit::{AuditSink, AuditWriterHandle};
use crate::config::Config;
use crate::identity::KeyStore;

/// A started gateway: its bound addresses and the means to stop it.
pub struct Running {
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub tls: bool,
    pub gateway: Arc<Gateway>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    audit_writer: Option<AuditWriterHandle>,
    grace: Duration,
}

/// Binds the listeners and starts serving. Everything that can be wrong with the
/// configuration on this machine (keys, certificates, ports, the trail) fails here, before
/// any request is accepted.
pub async fn start(config: &Config) -> Result<Running, String> {
    let keys = KeyStore::from_source(&config.identity.jwks)?;
    let background = vec![tokio::spawn(keys.clone().run_refresh())];

    let (audit, audit_writer) = AuditSink::open(&config.audit, &config.server.gateway_id)
        .map_err(|e| format!("audit.dir: {e}"))?;
    // The configuration in force follows the start record in the chain, ahead of any request.
    audit
        .record_event(crate::audit::config_event(config, "load", &[]))
        .map_err(|e| format!("audit.dir: {e}"))?;
    start_with(config, keys, audit, audit_writer, background).await
}

async fn start_with(
    config: &Config,
    keys: Arc<KeyStore>,
    audit: Arc<AuditSink>,
    audit_writer: AuditWriterHandle,
    background: Vec<JoinHandle<()>>,
) -> Result<Running, String> {
    let (shutdown, rx) = watch::channel(false);
    let stopping = Stopping::new(rx.clone(), config.server.shutdown_grace);
    let gateway = Arc::new(Gateway::new(config, keys, audit, stopping)?);
    let tls = match &config.server.tls {
        Some(files) => Some(TlsAcceptor::from(Arc::new(crate::tls::server_config(
            &files.cert,
            &files.key,
            config.server.client_ca.as_deref(),
        )?))),
        None => None,
    };
    let data = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("server.listen {}: {e}", config.server.listen))?;
    let admin = TcpListener::bind(config.server.admin_listen)
        .await
        .map_err(|e| format!("server.admin_listen {}: {e}", config.server.admin_listen))?;
    let data_addr = data.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;

    let settings = Settings {
        header_read_timeout: config.server.header_read_timeout,
        idle_timeout: config.server.idle_timeout,
        grace: config.server.shutdown_grace,
    };
    let tasks = vec![
        tokio::spawn(data_loop(
            data,
            gateway.clone(),
            tls.clone(),
            settings.clone(),
            rx.clone(),
        )),
        tokio::spawn(crate::admin::serve(admin, gateway.clone(), rx)),
    ];
    Ok(Running {
        data_addr,
        admin_addr,
        tls: tls.is_some(),
        gateway,
        shutdown,
        tasks,
        background,
        audit_writer: Some(audit_writer),
        grace: config.server.shutdown_grace,
    })
}

impl Running {
    /// Stops accepting, waits for in-flight requests (up to the grace period), then flushes
    /// and closes the audit trail.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        for t in self.background.drain(..) {
            t.abort();
        }
        let writer = self.audit_writer.take();
        let self_grace = self.grace;
        drop(self);
        if let Some(w) = writer {
            // Returns once the last sink is gone: connections are closed by now; upgraded
            // tunnels close one grace period after the signal.
            let _ = tokio::time::timeout(
                self_grace + Duration::from_secs(10),
                tokio::task::spawn_blocking(move || w.join()),
            )
            .await;
        }
    }
}

#[derive(Clone)]
struct Settings {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    grace: Duration,
}

fn builder(settings: &Settings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(settings.idle_timeout / 2))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(Some(256));
    b
}

async fn data_loop(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder(&settings));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let watcher = graceful.watcher();
                let gateway = gateway.clone();
                let tls = tls.clone();
                let builder = builder.clone();
                let handshake_timeout = settings.header_read_timeout;
                connections.spawn(async move {
                    match tls {
                        None => {
                            let conn = Arc::new(ConnInfo::new(peer, false, None));
                            let io = Watched::new(stream, conn.framing.clone());
                            let svc = service_fn(move |req| handle(gateway.clone(), conn.clone(), req));
                            let c = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                            let _ = watcher.watch(c.into_owned()).await;
                        }
                        Some(acceptor) => {
                            let accepted = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await;
                            let Ok(Ok(tls_stream)) = accepted else {
                                tracing::debug!(%peer, "TLS handshake failed or timed out");
                                return;
                            };
                            let (_, session) = tls_stream.get_ref();
                            let sni = session.server_name().map(str::to_owned);
                            let mut info = ConnInfo::new(peer, true, sni);
                            info.cert_subject = session
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| crate::tls::certificate_label(c.as_ref()));
                            let conn = Arc::new(info);
                            // An h2 connection opens with its preface, which switches the watch off.
                            let io = Watched::new(tls_stream, conn.framing.clone());
                            let svc = service_fn(move |req| handle(gateway.clone(), conn.clone(), req));
                            let c = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
                            let _ = watcher.watch(c.into_owned()).await;
                        }
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(settings.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period ended with requests still in flight; closing them");
    }
    // Whatever is left is cut; dropping each task runs its completion hook, so the trail
    // still says how every request ended.
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Runs `serve` until SIGTERM or SIGINT.
pub async fn serve_until_signal(config: &Config) -> Result<(), String> {
    let running = start(config).await?;
    println!(
        "gatehouse listening data={} tls={}",
        running.data_addr, running.tls
    );
    println!("gatehouse listening admin={}", running.admin_addr);
    tracing::info!(data = %running.data_addr, admin = %running.admin_addr, tls = running.tls, "gatehouse started");
    wait_for_signal().await;
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
