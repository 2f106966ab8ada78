//! Listeners: accept → TLS (SNI, ALPN) → hyper (HTTP/1.1 with upgrades, h2) → `handle`, and
//! the admin listener. Shutdown stops accepting, lets in-flight requests finish within the
//! grace period, then flushes the audit trail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::framing::Watched;
use super::{handle, ConnInfo, Gateway, Shared, Stopping};
use crate::audit::{AuditSink, AuditWriterHandle};
use crate::config::{Config, JwksSource};
use crate::identity::KeyStore;

/// The gateway each new connection gets (and the admin API reads). A reload swaps it; a
/// connection keeps the one it was accepted under until it ends, which a reload hastens
/// gracefully (see `serve_connection`), and an upgraded WebSocket keeps it for its whole life.
pub type CurrentGateway = Arc<ArcSwap<Gateway>>;

/// A started gateway: its bound addresses and the means to reload and stop it.
pub struct Running {
    pub data_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub tls: bool,
    current: CurrentGateway,
    reloader: Arc<Reloader>,
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
        .record_event(crate::audit::config_event(config, "load", &[], &[], None))
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
    let exceptions = crate::exceptions::no_exceptions();
    let shared = Shared::new(config);
    audit.report_to(shared.metrics.clone());
    let gateway = Arc::new(Gateway::new(
        config,
        keys.clone(),
        audit.clone(),
        stopping.clone(),
        exceptions.clone(),
        shared.clone(),
    )?);
    let current: CurrentGateway = Arc::new(ArcSwap::new(gateway));
    let server_tls = match &config.server.tls {
        Some(files) => Some(crate::tls::server_config(
            &files.cert,
            &files.key,
            config.server.client_ca.as_deref(),
        )?),
        None => None,
    };
    let tls = server_tls.clone().map(|c| TlsAcceptor::from(Arc::new(c)));
    // The admin listener speaks HTTP/1.1 only, with the same certificate.
    let admin_tls = server_tls.map(|mut c| {
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(c))
    });
    let exceptions_service = match &config.exceptions {
        Some(e) => Some(
            crate::exceptions::service::Service::start(
                config,
                e,
                exceptions.clone(),
                audit.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let mut background = background;
    let console = match &config.console {
        Some(c) => {
            let key = match &config.audit.signing_key {
                Some(path) => Some(crate::audit::digest::Signer::load(path)?.public_key()),
                None => None,
            };
            // One index per gateway: gateways sharing a trail directory each keep their own.
            let index_file = c.index_file.clone().unwrap_or_else(|| {
                config
                    .audit
                    .dir
                    .join(format!("console-index.{}.sqlite", config.server.gateway_id))
            });
            let (index, indexing) =
                crate::audit::index::TrailIndex::start(config.audit.dir.clone(), index_file)
                    .await
                    .map_err(|e| format!("console.index_file: {e}"))?;
            let (console, verifying) = crate::console::Console::new(
                c,
                config.audit.dir.clone(),
                key,
                index,
                audit.clone(),
                config.server.gateway_id.clone(),
            )?;
            background.push(indexing);
            background.push(verifying);
            Some(console)
        }
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
    let (reloaded, reloaded_rx) = watch::channel(0u64);
    let reloader = Arc::new(Reloader {
        current: current.clone(),
        reloaded,
        state: std::sync::Mutex::new(Reloadable {
            config: config.clone(),
            keys,
            audit,
            stopping,
            exceptions,
            exceptions_service: exceptions_service.clone(),
        }),
    });
    let tasks = vec![
        tokio::spawn(data_loop(
            data,
            current.clone(),
            tls.clone(),
            settings.clone(),
            rx.clone(),
            reloaded_rx,
        )),
        tokio::spawn(crate::admin::serve(
            admin,
            admin_tls,
            crate::admin::Admin {
                current: current.clone(),
                exceptions: exceptions_service,
                reloader: reloader.clone(),
                console,
                header_read_timeout: config.server.header_read_timeout,
            },
            rx,
        )),
    ];
    Ok(Running {
        data_addr,
        admin_addr,
        tls: tls.is_some(),
        current,
        reloader,
        shutdown,
        tasks,
        background,
        audit_writer: Some(audit_writer),
        grace: config.server.shutdown_grace,
    })
}

/// What a reload keeps: the trail and the stop signal are the process's, not the
/// configuration's; the key store is kept while its source is unchanged and refreshed.
struct Reloadable {
    config: Config,
    keys: Arc<KeyStore>,
    audit: Arc<AuditSink>,
    stopping: Stopping,
    exceptions: crate::exceptions::Live,
    exceptions_service: Option<Arc<crate::exceptions::service::Service>>,
}

/// What a reload did. Every attempt is also a `config` record in the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub applied: bool,
    /// Why the file was refused (the running configuration stays), each naming its key.
    pub errors: Vec<String>,
    /// Keys that changed but only take effect at the next start.
    pub needs_restart: Vec<&'static str>,
}

/// The keys whose values are bound at start (listeners, TLS, the trail) and differ.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.server, &new.server);
    let tls =
        |s: &crate::config::ServerConfig| s.tls.as_ref().map(|t| (t.cert.clone(), t.key.clone()));
    let checks = [
        ("server.listen", a.listen != b.listen),
        ("server.admin_listen", a.admin_listen != b.admin_listen),
        ("server.tls_cert/tls_key", tls(a) != tls(b)),
        ("server.client_ca", a.client_ca != b.client_ca),
        ("server.gateway_id", a.gateway_id != b.gateway_id),
        (
            "server.header_read_timeout_ms",
            a.header_read_timeout != b.header_read_timeout,
        ),
        ("server.idle_timeout_ms", a.idle_timeout != b.idle_timeout),
        (
            "server.shutdown_grace_ms",
            a.shutdown_grace != b.shutdown_grace,
        ),
        ("server.workers", a.workers != b.workers),
        (
            "audit",
            format!("{:?}", old.audit) != format!("{:?}", new.audit),
        ),
        // The console (its provider, sessions and groups) is built once, at start.
        ("console", old.console != new.console),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(k, _)| k)
        .collect()
}

/// Rebuilds the gateway from the configuration file on demand (SIGHUP, `POST /v1/reload`).
pub struct Reloader {
    current: CurrentGateway,
    /// Bumped by every applied reload: open connections finish what they have in flight and
    /// close, so their clients come back under the new configuration.
    reloaded: watch::Sender<u64>,
    /// The configuration in force and what a reload reuses; held only while reloading.
    state: std::sync::Mutex<Reloadable>,
}

impl Reloader {
    /// Who may reload through the admin API: `[admin] operator_groups` of the running file.
    pub fn operator_groups(&self) -> Vec<String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .config
            .later
            .admin
            .as_ref()
            .map(|a| a.operator_groups.clone())
            .unwrap_or_default()
    }

    /// Reads the configuration file again and, if it is valid, swaps a gateway built from it
    /// in for new connections. An invalid file changes nothing and every error is reported.
    /// JWKS files are read again (key rotation); a JWKS URL store is kept while the URL is.
    /// `by` names who asked (an operator's principal id), `None` for a signal.
    pub fn reload(&self, by: Option<&str>) -> ReloadOutcome {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = match Config::load(&state.config.source) {
            Err(errors) => Err(errors.0.iter().map(ToString::to_string).collect()),
            Ok(new) => {
                let keys = match (&state.config.identity.jwks, &new.identity.jwks) {
                    (old @ JwksSource::Url { .. }, now) if old == now => Ok(state.keys.clone()),
                    (_, now) => KeyStore::from_source(now),
                };
                keys.and_then(|keys| {
                    let shared = self.current.load().shared().clone();
                    let gateway = Gateway::new(
                        &new,
                        keys.clone(),
                        state.audit.clone(),
                        state.stopping.clone(),
                        state.exceptions.clone(),
                        shared,
                    )?;
                    Ok((new, keys, gateway))
                })
                .map_err(|e| vec![e])
            }
        };
        let (outcome, record) = match outcome {
            Ok((new, keys, gateway)) => {
                if !Arc::ptr_eq(&keys, &state.keys) {
                    // A fresh store refreshes itself for as long as the process runs.
                    tokio::spawn(keys.clone().run_refresh());
                }
                let needs_restart = needs_restart(&state.config, &new);
                if let (Some(service), Some(e)) = (&state.exceptions_service, &new.exceptions) {
                    service.set_limits(crate::exceptions::service::limits(&new, e));
                }
                gateway.shared().reconfigure(&new);
                gateway
                    .shared()
                    .reloads_applied
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.current.store(Arc::new(gateway));
                self.reloaded.send_modify(|generation| *generation += 1);
                let record = crate::audit::config_event(&new, "reload", &[], &needs_restart, by);
                state.config = new;
                state.keys = keys;
                (
                    ReloadOutcome {
                        applied: true,
                        errors: vec![],
                        needs_restart,
                    },
                    record,
                )
            }
            Err(errors) => {
                self.current
                    .load()
                    .shared()
                    .reloads_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let record = crate::audit::config_event(&state.config, "reload", &errors, &[], by);
                (
                    ReloadOutcome {
                        applied: false,
                        errors,
                        needs_restart: vec![],
                    },
                    record,
                )
            }
        };
        if state.audit.record_event(record).is_err() {
            tracing::error!("the audit trail did not take the reload record");
        }
        outcome
    }
}

impl Running {
    /// The gateway new connections get now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.current.load_full()
    }

    /// Reloads the configuration (see [`Reloader::reload`]), as SIGHUP does.
    pub fn reload(&self) -> ReloadOutcome {
        self.reloader.reload(Some("SIGHUP"))
    }

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
    current: CurrentGateway,
    tls: Option<TlsAcceptor>,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
    reloaded: watch::Receiver<u64>,
) {
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
                // Subscribed before the configuration is taken: a reload after this point
                // is seen by the connection, one before it is the configuration it gets.
                let mut reloaded = reloaded.clone();
                reloaded.mark_unchanged();
                let gateway = current.load_full();
                let max = gateway.max_connections() as u64;
                let Some(slot) = gateway.shared().metrics.connection_within(max) else {
                    // Closing at once tells the client to go elsewhere or retry; holding the
                    // socket open would spend the descriptor the cap exists to save.
                    tracing::warn!(%peer, max, "connection refused: limits.max_connections are open");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let stop = shutdown.clone();
                let tls = tls.clone();
                let builder = builder.clone();
                let handshake_timeout = settings.header_read_timeout;
                connections.spawn(async move {
                    let _slot = slot;
                    match tls {
                        None => {
                            let conn = Arc::new(ConnInfo::new(peer, false, None));
                            let io = Watched::new(stream, conn.framing.clone());
                            serve_connection(io, &builder, gateway, conn, stop, reloaded).await;
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
                            serve_connection(io, &builder, gateway, conn, stop, reloaded).await;
                        }
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    // Every connection saw the stop and is finishing what it has in flight.
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(settings.grace, drained).await.is_err() {
        tracing::warn!("shutdown grace period ended with requests still in flight; closing them");
    }
    // Whatever is left is cut; dropping each task runs its completion hook, so the trail
    // still says how every request ended.
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Serves one client connection on the configuration in force when it was accepted. A stop
/// or a reload ends it gracefully: requests in flight (and HTTP/2 streams) finish on that
/// configuration, an idle HTTP/1.1 connection closes, HTTP/2 gets GOAWAY, and the client's
/// next request arrives on a new connection and so under the new configuration. Upgraded
/// tunnels (WebSocket) have left the connection already and keep running.
async fn serve_connection<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    mut stop: watch::Receiver<bool>,
    mut reloaded: watch::Receiver<u64>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Boxed per request: hyper keeps a slot the size of the service's future for every open
    // connection, busy or idle, and the request pipeline inline is about 6 KiB; a pointer
    // keeps idle connections small.
    let svc = service_fn(move |req| Box::pin(handle(gateway.clone(), conn.clone(), req)));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = stop.changed() => {}
        _ = reloaded.changed() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// Runs `serve` until SIGTERM or SIGINT; SIGHUP reloads the configuration.
pub async fn serve_until_signal(config: &Config) -> Result<(), String> {
    // Handlers first: a SIGHUP sent as soon as "listening" is printed must reload, not kill.
    let mut signals = Signals::new();
    let running = start(config).await?;
    println!(
        "gatehouse listening data={} tls={}",
        running.data_addr, running.tls
    );
    println!(
        "gatehouse listening admin={} tls={}",
        running.admin_addr, running.tls
    );
    tracing::info!(data = %running.data_addr, admin = %running.admin_addr, tls = running.tls, "gatehouse started");
    while let Signal::Reload = signals.next().await {
        let outcome = running.reload();
        if outcome.applied {
            tracing::info!(needs_restart = ?outcome.needs_restart, "configuration reloaded");
        } else {
            tracing::error!(errors = ?outcome.errors, "configuration reload refused; the running configuration stays");
        }
    }
    tracing::info!("shutting down: no new connections; finishing in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

enum Signal {
    Stop,
    Reload,
}

/// SIGTERM and SIGINT stop; SIGHUP reloads. Elsewhere, Ctrl-C stops.
struct Signals {
    #[cfg(unix)]
    unix: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let unix = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(t), Ok(i), Ok(h)) => Some([t, i, h]),
                _ => None,
            };
            Signals { unix }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        if let Some([term, int, hup]) = &mut self.unix {
            return tokio::select! {
                _ = term.recv() => Signal::Stop,
                _ = int.recv() => Signal::Stop,
                _ = hup.recv() => Signal::Reload,
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop
    }
}
