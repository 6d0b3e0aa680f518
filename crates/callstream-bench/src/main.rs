//! `callstream-bench`: the load generator (see docs/benchmarks.md).
//!
//! - `run`: one scenario against one target, subscribers spread over worker processes.
//! - `subscribe`: a worker (started by `run`; reads its plan on stdin).
//! - `raw-server`: the raw baseline writer.
//! - `grip-origin`: the origin Pushpin holds SSE streams for.
//! - `report`: markdown tables with ratios from `run --json` results.
//! - `jitter`: how long this machine pauses a busy thread (host steal), to qualify tail latency.
//! - `audio`: concurrent bidirectional audio streams (seed 004); `audio-raw-pacer` its baseline.
//! - `webhooks`: webhook delivery from ingest to a receiver here, by endpoint count.

mod audio;
mod grip;
mod jitter;
mod marker;
mod procstat;
mod raw;
mod report;
mod run;
mod subscriber;
mod targets;
mod webhooks;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "callstream-bench",
    about = "Load generator for callstream and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario against one target and print (and optionally save) the result.
    Run(Box<run::RunArgs>),
    /// A subscriber worker (started by `run`).
    Subscribe,
    /// Many concurrent bidirectional audio streams (seed 004), measured from both ends.
    Audio(Box<audio::AudioArgs>),
    /// Webhook delivery, from ingest to a receiver in this process, by endpoint count.
    Webhooks(Box<webhooks::WebhookArgs>),
    /// The audio baseline: pre-encoded `media` messages at absolute 20 ms deadlines (started by
    /// `audio --target raw`).
    AudioRawPacer {
        /// Base URL; the stream's index is appended.
        #[arg(long)]
        url: String,
        #[arg(long)]
        streams: usize,
    },
    /// The raw baseline: pre-encoded SSE frames, no HTTP framing.
    RawServer {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        #[arg(long, default_value = "127.0.0.1:8091")]
        publish: String,
        #[arg(long, default_value_t = 64)]
        queue: usize,
    },
    /// Markdown tables (with ratios to the best peer) from a results file of `run --json`.
    Report { results: std::path::PathBuf },
    /// How often and how long the host pauses a busy thread on each core (steal).
    Jitter {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Busy threads (one per core by default).
        #[arg(long)]
        threads: Option<usize>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// The origin Pushpin holds SSE streams for.
    GripOrigin {
        #[arg(long, default_value = "127.0.0.1:8092")]
        listen: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Workers and the raw server use every core; the coordinator needs little.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args).await.map(|_| ()),
            Command::Subscribe => subscriber::run_worker().await,
            Command::Audio(args) => audio::run(*args).await.map(|_| ()),
            Command::Webhooks(args) => webhooks::run(*args).await.map(|_| ()),
            Command::AudioRawPacer { url, streams } => audio::raw_pacer(&url, streams).await,
            Command::RawServer {
                listen,
                publish,
                queue,
            } => raw::serve(&listen, &publish, queue).await,
            Command::GripOrigin { listen } => grip::serve(&listen).await,
            Command::Report { results } => report::print(&results),
            Command::Jitter {
                seconds,
                threads,
                json,
            } => jitter::run(seconds, threads, json.as_deref()),
        }
    })
}
