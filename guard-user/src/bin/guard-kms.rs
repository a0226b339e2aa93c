//! guard-kms: guard's own small KMS (HTTPS with client certificates, keys
//! sealed at rest under a master key, its own audit log).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use guard::kms::pki::write_pki;
use guard::kms::server::{init_master_key, Server, ServerConfig};

#[derive(Parser)]
#[command(name = "guard-kms", about = "guard's key management server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve keys over HTTPS to clients with a certificate from --client-ca.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Directory of the sealed key store.
        #[arg(long)]
        state_dir: PathBuf,
        /// File with the 32-byte master key (keep it apart from the store).
        #[arg(long)]
        master_key: PathBuf,
        /// CA certificate(s) that client certificates must chain to.
        #[arg(long)]
        client_ca: PathBuf,
        /// Server certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Server private key (PEM).
        #[arg(long)]
        key: PathBuf,
        /// Append-only audit log (JSON lines, hash-chained).
        #[arg(long)]
        audit_log: Option<PathBuf>,
        /// Also write audit entries to the systemd journal (refuses to start
        /// if journald is not listening).
        #[arg(long)]
        journal: bool,
    },
    /// Create a new random master key file (refuses to overwrite one).
    InitMasterKey { path: PathBuf },
    /// Write a CA, a server certificate and a client certificate into DIR.
    GenPki {
        #[arg(long)]
        out: PathBuf,
        /// Names (DNS or IP) the server certificate is valid for.
        #[arg(long, default_values = ["localhost", "127.0.0.1"])]
        server_name: Vec<String>,
        #[arg(long, default_value = "guardd")]
        client_name: String,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Serve {
            listen,
            state_dir,
            master_key,
            client_ca,
            cert,
            key,
            audit_log,
            journal,
        } => {
            let config = ServerConfig {
                listen,
                state_dir,
                master_key,
                client_ca,
                cert,
                key,
                audit_log,
                audit_to_stderr: true,
                audit_to_journal: journal,
            };
            tokio::runtime::Runtime::new()?.block_on(async {
                let server = Server::bind(&config).await?;
                // Tests and scripts read this line to learn the port.
                println!("guard-kms listening on {}", server.local_addr()?);
                std::io::stdout().flush()?;
                server.run().await
            })
        }
        Command::InitMasterKey { path } => {
            init_master_key(&path)?;
            println!("master key written to {}", path.display());
            Ok(())
        }
        Command::GenPki {
            out,
            server_name,
            client_name,
            days,
        } => {
            let names: Vec<&str> = server_name.iter().map(String::as_str).collect();
            let files = write_pki(&out, &names, &client_name, days)?;
            println!(
                "CA {}, server {}, client {}",
                files.ca_cert.display(),
                files.server_cert.display(),
                files.client_cert.display()
            );
            Ok(())
        }
    }
}
