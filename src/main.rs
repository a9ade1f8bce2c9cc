//! The `omnibind` command: parses arguments and hands over to the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "omnibind",
    version = omnibind::build_info::VERSION_LINE.as_str(),
    about = "Multimodal vector search server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(omnibind::cli::ServeArgs),
    /// Embed images or texts with a model and print the vectors as JSON.
    Embed(omnibind::cli::EmbedArgs),
    /// Search a collection of a running server and print the hits as a table.
    Search(omnibind::cli::SearchArgs),
    /// Upload files and folders to a collection of a running server (resumable).
    Ingest(omnibind::cli::IngestArgs),
    /// Convert the official ImageBind checkpoint (.pth) into a safetensors model directory.
    ConvertImagebind(omnibind::cli::ConvertImageBindArgs),
    /// Train a small ImageBind-architecture model from a recipe (TOML).
    Train(omnibind::cli::TrainArgs),
    /// Cross-modal retrieval and zero-shot classification over an OpenMoji dataset.
    Eval(omnibind::cli::EvalArgs),
    /// Benchmarks that print a table.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Prepare training data from registry packages.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Six-modality dataset from the OpenMoji npm package (`npm pack openmoji@17.0.0`).
    Openmoji(omnibind::cli::DataOpenMojiArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Upload throughput and search latency of a running server, over HTTP.
    Http(omnibind::bench::HttpBenchArgs),
    /// The vector indexes in-process: build, memory, dump size, recall and queries/s.
    Index(omnibind::bench::IndexBenchArgs),
    /// Encoder items per second per model, modality and batch size (preprocessing apart).
    Encode(omnibind::bench::EncodeBenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line each; a backtrace only with RUST_BACKTRACE=1.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
                eprintln!("{}", e.backtrace());
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The server reports its progress (address, models, shutdown) at `info`; the other
    // commands print their results on standard output and only warnings on standard error.
    let default_filter = match cli.command {
        Command::Serve(_) => "warn,omnibind=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Serve(args) => omnibind::cli::serve(args),
        Command::Embed(args) => omnibind::cli::embed(args),
        Command::Search(args) => omnibind::cli::search(args),
        Command::ConvertImagebind(args) => omnibind::cli::convert_imagebind(args),
        Command::Train(args) => omnibind::cli::train(args),
        Command::Eval(args) => omnibind::cli::eval(args),
        Command::Bench(BenchCommand::Http(args)) => omnibind::bench::http(args),
        Command::Bench(BenchCommand::Index(args)) => omnibind::bench::index(args),
        Command::Bench(BenchCommand::Encode(args)) => omnibind::bench::encode(args),
        Command::Data(DataCommand::Openmoji(args)) => omnibind::cli::data_openmoji(args),
        Command::Ingest(args) => {
            let summary = omnibind::cli::ingest(args)?;
            if summary.failed > 0 {
                anyhow::bail!("{} files could not be ingested", summary.failed);
            }
            Ok(())
        }
    }
}
