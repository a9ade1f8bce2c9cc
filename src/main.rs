//! The `omnibind` command: parses arguments and hands over to the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "omnibind", version, about = "Multimodal vector search server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed images or texts with a model and print the vectors as JSON.
    Embed(omnibind::cli::EmbedArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Embed(args) => omnibind::cli::embed(args),
    }
}
