//! `cargo bench -p guard-user --bench keys` (as root): the keys benchmark
//! table, the same as `guardctl bench keys`.

use clap::Parser;
use guard::volume::bench::{run, BenchKeysArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchKeysArgs,
    /// Accepted and ignored: cargo bench passes it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    run(Cli::parse().args)
}
