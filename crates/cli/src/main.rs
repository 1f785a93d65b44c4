//! `filterdb`: a columnar store and SQL engine for trained CNN convolution filters.

mod analyze;
mod commands;
mod docs;
mod import;
mod output;
mod progress;
mod report;
mod shell;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// mimalloc, as datafusion-cli uses: queries allocate and free batch-sized buffers
/// (hundreds of KiB) at a high rate, which the system allocator serves with fresh
/// `mmap`s and page faults (about a fifth of `analyze kl-matrix`'s CPU time).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A columnar store and SQL query engine for trained CNN 3x3 convolution filters.
#[derive(Debug, Parser)]
#[command(name = "filterdb", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--store`, shared by every command that reads or writes a store.
#[derive(Debug, Args, Clone)]
pub struct StoreArg {
    /// The store directory.
    #[arg(long, env = "FILTERDB_STORE", default_value = "./filterdb-store")]
    store: PathBuf,
}

/// Options of commands that run queries.
#[derive(Debug, Args, Clone)]
pub struct QueryArgs {
    /// Read the store as of this version (see `filterdb info`).
    #[arg(long)]
    version: Option<u64>,
    /// Memory queries may use before spilling to disk, e.g. 512M, 4G.
    #[arg(long, value_parser = filterdb_sql::parse_memory_size)]
    memory_limit: Option<usize>,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an empty store.
    Init(commands::InitArgs),
    /// Ingest one model file, or many through --manifest.
    Ingest(commands::IngestArgs),
    /// Import the CNN Filter DB release (dataset.h5), one commit per model.
    #[command(name = "import-cnnfilterdb")]
    ImportCnnfilterdb(import::ImportArgs),
    /// Run one SQL query, or open an interactive shell without one.
    Sql(commands::SqlArgs),
    /// Write a query's result to a file for notebooks.
    Export(commands::ExportArgs),
    /// Summarise a store (or one model with --model).
    Info(commands::InfoArgs),
    /// Write a deterministic synthetic model zoo (safetensors + cards + manifest).
    Gen(commands::GenArgs),
    /// Delete files of crashed writers and, optionally, old history.
    Vacuum(commands::VacuumArgs),
    /// List or extend the task / visual-category vocabularies.
    Vocab(commands::VocabArgs),
    /// The paper's analyses: KL drift matrix, degenerated layers, PCA basis.
    Analyze(analyze::AnalyzeArgs),
    /// Generate reference documentation (`docs functions`).
    Docs {
        #[command(subcommand)]
        what: DocsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DocsCommand {
    /// Write docs/functions.md from the functions' documentation (or --check it).
    Functions(docs::DocsArgs),
}

/// Output piped into a program that stops reading (`filterdb info | head`) ends the
/// process quietly, as in other command-line tools, instead of panicking on the failed
/// write: Rust ignores SIGPIPE by default, so restore the default action.
fn reset_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    reset_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(a) => commands::init(a),
        Command::Ingest(a) => commands::ingest(a),
        Command::ImportCnnfilterdb(a) => import::run(a),
        Command::Sql(a) => commands::sql(a),
        Command::Export(a) => commands::export(a),
        Command::Info(a) => commands::info(a),
        Command::Gen(a) => commands::gen_zoo(a),
        Command::Vacuum(a) => commands::vacuum(a),
        Command::Vocab(a) => commands::vocab(a),
        Command::Analyze(a) => analyze::run(a),
        Command::Docs {
            what: DocsCommand::Functions(a),
        } => docs::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
