//! The `gatehouse` command line. Parsing arguments and printing only; the work is in the
//! library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gatehouse::config::Config;
use gatehouse::console::web::URL_PART;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Data-access gateway for Databricks workspaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = "config/gatehouse.toml")]
        config: PathBuf,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print route, classification, principal and decision for a described request; nothing
    /// is sent.
    Explain {
        #[arg(long, default_value = "config/gatehouse.toml")]
        config: PathBuf,
        /// The bearer token the request would carry (omit for an anonymous request).
        #[arg(long, env = "GATEHOUSE_EXPLAIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, default_value = "GET")]
        method: String,
        /// Full URL, e.g. https://analytics.dbx.example/api/2.0/dbfs/read?path=/x
        #[arg(long)]
        url: String,
        /// A file with the request body, for requests whose body is inspected.
        #[arg(long)]
        body: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// The audit trail: signing keys and verification.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The CDAO workflow: request, approve, reject, revoke and list exceptions through the
    /// admin API.
    Exceptions {
        /// The admin API, e.g. https://gatehouse.bank.example:9443
        #[arg(long, env = "GATEHOUSE_ADMIN", global = true)]
        admin: Option<String>,
        /// Your OAuth access token (never printed).
        #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        /// A private CA to trust for the admin API's certificate.
        #[arg(long, env = "GATEHOUSE_CACERT", global = true)]
        cacert: Option<PathBuf>,
        #[command(subcommand)]
        command: ExceptionsCommand,
    },
    /// Start the gateway on the example configuration in front of a bundled stand-in
    /// workspace, send allowed and blocked requests, and show the audit trail.
    Demo {
        /// Where to put the demo's certificates, keys, configuration and trail.
        #[arg(long, default_value = "var/demo")]
        dir: PathBuf,
        /// The example configuration the demo starts from.
        #[arg(long, default_value = "config/gatehouse.toml")]
        config: PathBuf,
        /// Then keep the gateway running with the review console on https://localhost:PORT/,
        /// signing in through the tests' OpenID Provider (needs `npm ci --prefix tests/oidc`).
        #[arg(long)]
        console: bool,
        /// The console's port.
        #[arg(long, default_value_t = 9443)]
        console_port: u16,
    },
}

#[derive(Subcommand)]
enum ExceptionsCommand {
    /// Ask for an exception; prints its id alone on the last line.
    Request {
        /// raw-bucket | download | workspace-access
        #[arg(long)]
        kind: String,
        /// A principal id, or group:NAME
        #[arg(long)]
        subject: String,
        /// raw-bucket: the bucket
        #[arg(long)]
        bucket: Option<String>,
        /// raw-bucket: key prefix; download: asset prefix (dbfs:/FileStore/approved/)
        #[arg(long)]
        prefix: Option<String>,
        /// raw-bucket: read,list,write
        #[arg(long)]
        ops: Option<String>,
        /// download, workspace-access: the workspace
        #[arg(long)]
        workspace: Option<String>,
        /// download: actions, e.g. dbfs.read,files.download
        #[arg(long)]
        actions: Option<String>,
        /// workspace-access: action categories, e.g. metadata,execute
        #[arg(long)]
        categories: Option<String>,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        ticket: String,
        /// 30s, 15m, 4h, 7d; counted from the final approval
        #[arg(long)]
        duration: String,
    },
    /// Approve a pending exception (not your own).
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a pending exception.
    Reject {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// Revoke a pending or approved exception, at once.
    Revoke {
        id: String,
        #[arg(long)]
        comment: Option<String>,
    },
    /// List exceptions, newest first.
    List {
        /// pending | approved | rejected | revoked | expired
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One exception with its history.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file; every error is reported, each naming its key.
    Check {
        #[arg(long, default_value = "config/gatehouse.toml")]
        config: PathBuf,
    },
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum AuditCommand {
    /// An Ed25519 key pair for signing trail digests: the private key to PATH (mode 0600),
    /// the public key to PATH.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Search the trail: decisions matching every filter given, joined with their completions.
    Query {
        dir: PathBuf,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        category: Option<String>,
        /// allow | deny | would_deny
        #[arg(long)]
        decision: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        #[arg(long)]
        exception: Option<String>,
        #[arg(long)]
        bucket: Option<String>,
        /// Asset prefix, as the request named it (dbfs:/tmp/, s3://bucket/key)
        #[arg(long)]
        asset: Option<String>,
        #[arg(long)]
        request_id: Option<String>,
        /// A duration back from now (30s, 15m, 1h, 7d) or an RFC 3339 UTC time
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Who read or wrote which data: per principal, asset and direction, how many requests
    /// (allowed, denied), first and last seen, bytes.
    Lineage {
        dir: PathBuf,
        /// Asset prefix as the request named it (dbfs:/tmp/x.csv, s3://bucket/key)
        #[arg(
            long,
            conflicts_with = "principal",
            required_unless_present = "principal"
        )]
        asset: Option<String>,
        /// Principal id (e.g. alice@bank.example)
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check the digest log (signatures with --key), every segment against its digest, and
    /// every record's hash, link and seq; names the first broken record or missing segment.
    Verify {
        dir: PathBuf,
        /// Public key for signed digests (PATH.pub from `audit keygen`).
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// A development CA with server and client certificates (never for production).
    Dev {
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// Extra host names for the server certificate (localhost and 127.0.0.1 are always in).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("gatehouse: {message}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEHOUSE_LOG")
        // rustls warns on every handshake whose SNI is an IP address: a client could flood
        // the log with it, and it tells an operator nothing to act on.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rustls=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// The serving runtime: one worker runs on the current thread, which saves the cross-thread
/// wakeups a one-worker multi-thread runtime still pays.
fn serving_runtime(workers: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Serve { config } => {
            let config = load(&config)?;
            serving_runtime(config.server.workers)?
                .block_on(gatehouse::proxy::server::serve_until_signal(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} workspaces, gateway {}, listen {}{})",
                    config.display(),
                    c.workspaces.len(),
                    c.server.gateway_id,
                    c.server.listen,
                    if c.server.tls.is_some() {
                        ", TLS"
                    } else {
                        ", plaintext"
                    }
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{}: {} error(s)", config.display(), errors.0.len());
                for e in &errors.0 {
                    eprintln!("  {e}");
                }
                Ok(ExitCode::from(1))
            }
        },
        Command::Explain {
            config,
            token,
            method,
            url,
            body,
            json,
        } => {
            let config = load(&config)?;
            let body = match body {
                Some(p) => Some(std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?),
                None => None,
            };
            let described = gatehouse::explain::Described {
                method: &method,
                url: &url,
                token: token.as_deref(),
                body: body.as_deref(),
            };
            let text =
                runtime()?.block_on(gatehouse::explain::explain(&config, &described, json))?;
            print!("{text}");
            if json {
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs {
            command: CertsCommand::Dev { out, hosts },
        } => {
            let certs = gatehouse::dev::generate_certs(&hosts, "gatehouse-dev-client")?;
            for path in certs.write(&out)? {
                println!("wrote {path}");
            }
            println!("development certificates only: never use them in production");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Keygen { out },
        } => {
            let pub_path = gatehouse::dev::write_ed25519_keypair(&out)?;
            println!(
                "wrote {} (private, 0600) and {}",
                out.display(),
                pub_path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command:
                AuditCommand::Query {
                    dir,
                    principal,
                    workspace,
                    action,
                    category,
                    decision,
                    rule,
                    exception,
                    bucket,
                    asset,
                    request_id,
                    since,
                    until,
                    limit,
                    json,
                },
        } => {
            use gatehouse::audit::query;
            let now = std::time::SystemTime::now();
            let bound = |t: Option<String>| t.map(|t| query::time_bound(&t, now)).transpose();
            let filter = query::Filter {
                principal,
                workspace,
                action,
                category,
                decision,
                rule,
                exception,
                bucket,
                asset,
                request_id,
                since: bound(since)?,
                until: bound(until)?,
                limit,
            };
            let hits = query::run(&dir, &filter)?;
            if json {
                print!("{}", query::json_lines(&hits));
            } else {
                print!("{}", query::table(&hits));
                eprintln!("{} request(s)", hits.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command: AuditCommand::Verify { dir, key },
        } => {
            let key = key
                .map(|k| gatehouse::audit::digest::PublicKey::load(&k))
                .transpose()?;
            match gatehouse::audit::verify::verify_dir(&dir, key.as_ref()) {
                Ok(reports) => {
                    for r in &reports {
                        println!("{}", verify_summary(r, key.is_some()));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("audit verify: FAILED: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Audit {
            command:
                AuditCommand::Lineage {
                    dir,
                    asset,
                    principal,
                    json,
                },
        } => {
            use gatehouse::audit::lineage;
            let subject = match (asset, principal) {
                (Some(a), None) => lineage::Subject::Asset(a),
                (None, Some(p)) => lineage::Subject::Principal(p),
                _ => return Err("give one of --asset PREFIX or --principal ID".into()),
            };
            let rows = lineage::scan(&dir, subject)?;
            if json {
                print!("{}", lineage::json_lines(&rows));
            } else {
                print!("{}", lineage::table(&rows));
                eprintln!("{} row(s)", rows.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Exceptions {
            admin,
            token,
            cacert,
            command,
        } => {
            let admin = admin.ok_or("no admin API: give --admin URL or set GATEHOUSE_ADMIN")?;
            let client = gatehouse::exceptions::cli::AdminClient::new(
                &admin,
                token.as_deref().unwrap_or(""),
                cacert.as_deref(),
            )?;
            runtime()?.block_on(exceptions_command(&client, command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            dir,
            config,
            console,
            console_port,
        } => {
            let console = console.then_some(console_port);
            runtime()?.block_on(gatehouse::demo::run(&config, &dir, console))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn exceptions_command(
    client: &gatehouse::exceptions::cli::AdminClient,
    command: ExceptionsCommand,
) -> Result<(), String> {
    use gatehouse::exceptions::cli::{describe, list_arg, table};
    use http::Method;
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, URL_PART).to_string();
    match command {
        ExceptionsCommand::Request {
            kind,
            subject,
            bucket,
            prefix,
            ops,
            workspace,
            actions,
            categories,
            reason,
            ticket,
            duration,
        } => {
            let body = serde_json::json!({
                "kind": kind, "subject": subject, "bucket": bucket, "prefix": prefix,
                "ops": ops.as_deref().map(list_arg), "workspace": workspace,
                "actions": actions.as_deref().map(list_arg),
                "categories": categories.as_deref().map(list_arg),
                "reason": reason, "ticket": ticket, "duration": duration,
            });
            let ex = client
                .call(Method::POST, "/v1/exceptions", Some(&body))
                .await?;
            print!("{}", describe(&ex));
            println!("{}", ex["id"].as_str().unwrap_or_default());
        }
        ExceptionsCommand::Approve { id, comment } => step(client, "approve", &id, comment).await?,
        ExceptionsCommand::Reject { id, comment } => step(client, "reject", &id, comment).await?,
        ExceptionsCommand::Revoke { id, comment } => step(client, "revoke", &id, comment).await?,
        ExceptionsCommand::List {
            status,
            subject,
            kind,
            json,
        } => {
            let mut query = Vec::new();
            for (name, value) in [("status", status), ("subject", subject), ("kind", kind)] {
                if let Some(v) = value {
                    query.push(format!("{name}={}", enc(&v)));
                }
            }
            let path = if query.is_empty() {
                "/v1/exceptions".to_owned()
            } else {
                format!("/v1/exceptions?{}", query.join("&"))
            };
            let answer = client.call(Method::GET, &path, None).await?;
            let items = answer["exceptions"].as_array().cloned().unwrap_or_default();
            if json {
                for ex in &items {
                    println!("{ex}");
                }
            } else {
                print!("{}", table(&items));
                eprintln!("{} exception(s)", items.len());
            }
        }
        ExceptionsCommand::Show { id, json } => {
            let ex = client
                .call(Method::GET, &format!("/v1/exceptions/{}", enc(&id)), None)
                .await?;
            if json {
                println!("{ex}");
            } else {
                print!("{}", describe(&ex));
            }
        }
    }
    Ok(())
}

/// approve / reject / revoke: the exception as it stands afterwards.
async fn step(
    client: &gatehouse::exceptions::cli::AdminClient,
    verb: &str,
    id: &str,
    comment: Option<String>,
) -> Result<(), String> {
    let id = percent_encoding::utf8_percent_encode(id, URL_PART);
    let body = serde_json::json!({ "comment": comment });
    let ex = client
        .call(
            http::Method::POST,
            &format!("/v1/exceptions/{id}/{verb}"),
            Some(&body),
        )
        .await?;
    print!("{}", gatehouse::exceptions::cli::describe(&ex));
    Ok(())
}

/// One line per gateway: what held, and what verification could not cover.
fn verify_summary(r: &gatehouse::audit::verify::GatewayReport, keyed: bool) -> String {
    let range = match (r.first_seq, r.last_seq) {
        (Some(a), Some(b)) => format!("seq {a}..{b}"),
        _ => "no records".to_owned(),
    };
    let mut s = format!(
        "{}: ok, {} segment(s), {} records ({range}), {} digest(s)",
        r.gateway, r.segments, r.records, r.digests
    );
    if keyed {
        s.push_str(&format!(", {} signature(s) checked", r.signatures_checked));
    } else if r.digests > 0 {
        s.push_str(", signatures NOT checked (give --key PATH.pub)");
    } else {
        s.push_str(", no digests: only the record chain was checked");
    }
    if r.quiet_intervals > 0 {
        s.push_str(&format!(", {} quiet interval(s)", r.quiet_intervals));
    }
    if let Some(open) = &r.open_segment {
        s.push_str(&format!(
            "; {open} is not attested by a digest yet (being written, or left by a crash until the next start)"
        ));
    }
    if r.torn_tail {
        s.push_str("; a torn last line, left by a crash mid-write, is tolerated as the tail");
    }
    s
}

fn load(path: &std::path::Path) -> Result<Config, String> {
    Config::load(path).map_err(|errors| {
        let mut s = format!("{}: invalid configuration", path.display());
        for e in &errors.0 {
            s.push_str("\n  ");
            s.push_str(&e.to_string());
        }
        s
    })
}
