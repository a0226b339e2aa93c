//! guard-logd: the audit log collector. Receives hosts' hash-chained records
//! over mutual TLS, checks them, stores them append-only and answers each
//! checkpoint with a cosigned receipt. See `guard::audit::collector`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use guard::audit::collector::{Collector, CollectorConfig};
use guard::audit::tls::TlsFiles;

#[derive(Debug, Parser)]
#[command(name = "guard-logd", about = "Audit log collector for guard hosts")]
struct Args {
    /// This collector's name (appears in its receipts).
    #[arg(long)]
    name: String,
    /// Address to listen on, e.g. 0.0.0.0:7514 (port 0 picks a free port).
    #[arg(long)]
    listen: String,
    /// Store directory (one sub-directory per host under hosts/).
    #[arg(long)]
    store: PathBuf,
    /// Ed25519 signing key file (default: STORE/collector.key, created if missing).
    #[arg(long)]
    key: Option<PathBuf>,
    /// PEM CA that signs the hosts' client certificates.
    #[arg(long)]
    ca: PathBuf,
    /// PEM server certificate chain.
    #[arg(long)]
    cert: PathBuf,
    /// PEM private key of the server certificate.
    #[arg(long)]
    tls_key: PathBuf,
    /// A host's known signing key, as HOST=HEX (repeatable); others are pinned on first contact.
    #[arg(long = "host-key", value_name = "HOST=HEX")]
    host_keys: Vec<String>,
}

fn parse_host_keys(entries: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut keys = HashMap::new();
    for entry in entries {
        let Some((host, key)) = entry.split_once('=') else {
            bail!("--host-key {entry:?}: expected HOST=HEX");
        };
        if keys.insert(host.to_owned(), key.to_owned()).is_some() {
            bail!("--host-key: host {host:?} given twice");
        }
    }
    Ok(keys)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = CollectorConfig {
        name: args.name.clone(),
        key_file: args
            .key
            .clone()
            .unwrap_or_else(|| args.store.join("collector.key")),
        store: args.store,
        tls: TlsFiles {
            ca: args.ca,
            cert: args.cert,
            key: args.tls_key,
        },
        host_keys: parse_host_keys(&args.host_keys)?,
    };
    let collector = Collector::new(config)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    // Tests and the benchmark read this line to learn the port.
    println!(
        "guard-logd {} listening on {} key {}",
        args.name,
        listener.local_addr()?,
        collector.public_key_hex()
    );
    std::io::stdout().flush()?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = collector.serve(listener) => result,
        _ = terminate.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
