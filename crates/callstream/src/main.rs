//! `callstream`: the gateway's command line. Everything here is wiring; the server, simulator
//! and store crates do the work.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use callstream_core::KeyKind;
use callstream_server::{Config, auth};
use callstream_simulator::{RunOptions, Runtime};
use callstream_store::{PgStore, SqliteStore, Store};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// jemalloc rather than glibc's malloc. A node on NATS and PostgreSQL spent a quarter of its
/// time in glibc's allocator (`malloc_consolidate`, `unlink_chunk`: every runtime message
/// allocates and frees buffers of many sizes on both worker threads); with jemalloc the two
/// nodes of the cross-node run took a fifth less CPU (node A 0.26–0.28 cores against
/// 0.34–0.36) and its p50 fell from 7.9–8.2 to 6.6–7.2 ms (docs/benchmarks.md, "The
/// allocator").
#[cfg(all(unix, not(target_env = "musl"), feature = "jemalloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "callstream",
    version,
    about = "Live-call streaming gateway: transcripts and events over SSE and WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Run the gateway on embedded defaults with simulated calls flowing, and print how to watch them.
    Demo(ServeArgs),
    /// Play realistic simulated calls against a running gateway through its ingest API.
    Simulate(SimulateArgs),
    /// Manage API and runtime keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Create or update the PostgreSQL schema, connected as the owner role (docs/operations.md).
    Migrate {
        /// PostgreSQL URL of the owner role, e.g.
        /// `postgres://callstream_owner@127.0.0.1/callstream`.
        #[arg(long, env = "CALLSTREAM_OWNER_DATABASE_URL")]
        database_url: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "CALLSTREAM_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the embedded database [default: ./callstream-data].
    #[arg(long, env = "CALLSTREAM_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file (see docs/operations.md).
    #[arg(long, env = "CALLSTREAM_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct SimulateArgs {
    /// Base URL of the gateway.
    #[arg(
        long,
        env = "CALLSTREAM_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// Runtime key (`rk_live_…`) of the workspace to ingest into.
    #[arg(long, env = "CALLSTREAM_RUNTIME_KEY")]
    runtime_key: String,
    /// Calls to play; 0 plays until interrupted.
    #[arg(long, env = "CALLSTREAM_SIM_CALLS", default_value_t = 1)]
    calls: u64,
    /// New calls started per second (above 0, at most 1000).
    #[arg(long, env = "CALLSTREAM_SIM_RATE", default_value_t = 0.5, value_parser = rate)]
    rate: f64,
    /// Playback speed: 1 is real time, 10 is ten times faster, `inf` sends without pauses.
    #[arg(long, env = "CALLSTREAM_SIM_SPEED", default_value_t = 1.0, value_parser = speed)]
    speed: f64,
    /// Seed for the call scripts.
    #[arg(long, env = "CALLSTREAM_SIM_SEED", default_value_t = 1)]
    seed: u64,
    /// Also play SMS/WhatsApp conversations (one for every three calls).
    #[arg(long, env = "CALLSTREAM_SIM_CONVERSATIONS")]
    conversations: bool,
    /// The calls' audio: `synth` (a synthesised voice following each turn), `off`, or a WAV
    /// file (mono 16-bit, 8 or 16 kHz) for the caller's voice.
    #[arg(long, env = "CALLSTREAM_SIM_AUDIO", default_value = "synth")]
    audio: String,
}

/// The `--audio` choice.
fn audio_source(choice: &str) -> Result<Option<callstream_simulator::audio::Source>> {
    Ok(match choice {
        "off" => None,
        "synth" => Some(callstream_simulator::audio::Source::Synth),
        path => Some(
            callstream_simulator::audio::Source::wav(Path::new(path))
                .map_err(|e| anyhow::anyhow!("--audio: {e}"))?,
        ),
    })
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key (and the workspace, on first use). Safe while the server runs.
    Create {
        /// The gateway's data directory.
        #[arg(long, env = "CALLSTREAM_DATA_DIR", default_value = "./callstream-data")]
        data_dir: PathBuf,
        /// The cluster's PostgreSQL (the gateway's role), instead of the data directory.
        #[arg(long, env = "CALLSTREAM_DATABASE_URL")]
        database_url: Option<String>,
        /// Workspace name.
        #[arg(long, env = "CALLSTREAM_WORKSPACE")]
        workspace: String,
        /// Create a runtime key (`rk_live_…`, for ingest) instead of an API key (`pk_live_…`).
        #[arg(long, env = "CALLSTREAM_KEY_RUNTIME")]
        runtime: bool,
        /// An admin API key: it may also list, create and revoke the workspace's keys over
        /// REST (`/v1/keys`).
        #[arg(long, conflicts_with = "runtime")]
        admin: bool,
        /// When the key stops working (RFC 3339, e.g. `2027-01-31T00:00:00Z`).
        #[arg(long, value_parser = expiry)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// Print JSON `{"workspace_id","auth_id","key","key_id"}`.
        #[arg(long, env = "CALLSTREAM_KEY_JSON")]
        json: bool,
        /// Create the data directory's database if it has none yet (to make keys before the
        /// gateway's first start). Without it, a directory with no database is refused: a key
        /// made in the wrong place would be refused by the running gateway.
        #[arg(long)]
        init: bool,
    },
    /// List a workspace's keys (never their secrets). Safe while the server runs.
    List {
        #[arg(long, env = "CALLSTREAM_DATA_DIR", default_value = "./callstream-data")]
        data_dir: PathBuf,
        #[arg(long, env = "CALLSTREAM_DATABASE_URL")]
        database_url: Option<String>,
        /// Workspace name.
        #[arg(long, env = "CALLSTREAM_WORKSPACE")]
        workspace: String,
        /// Print a JSON array.
        #[arg(long, env = "CALLSTREAM_KEY_JSON")]
        json: bool,
    },
    /// Revoke a key: it is refused at once, and every stream opened with it (or with a stream
    /// token or session it minted) closes within a second, on every node. Safe while the
    /// server runs.
    Revoke {
        #[arg(long, env = "CALLSTREAM_DATA_DIR", default_value = "./callstream-data")]
        data_dir: PathBuf,
        #[arg(long, env = "CALLSTREAM_DATABASE_URL")]
        database_url: Option<String>,
        /// Workspace name.
        #[arg(long, env = "CALLSTREAM_WORKSPACE")]
        workspace: String,
        /// The key's id (`key_…`, from `keys list`).
        key_id: String,
    },
}

fn expiry(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let at = callstream_core::time::parse(text)
        .map_err(|e| format!("expected an RFC 3339 time such as 2027-01-31T00:00:00Z ({e})"))?;
    if at <= callstream_core::time::now() {
        return Err("already past".into());
    }
    Ok(at)
}

async fn key_store(
    data_dir: &Path,
    database_url: Option<String>,
    init: bool,
) -> Result<Box<dyn Store>> {
    if database_url.is_none() && !init && !data_dir.join("callstream.db").exists() {
        bail!(
            "{} has no callstream database: point --data-dir (or CALLSTREAM_DATA_DIR) at the running gateway's data directory, or pass --init to create one here",
            data_dir.display()
        );
    }
    Ok(match database_url {
        Some(url) => Box::new(
            PgStore::connect(&url, 1)
                .await
                .context("connecting to PostgreSQL")?,
        ),
        None => Box::new(open_store(data_dir).await?),
    })
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1000.0 => Ok(r),
        _ => Err("expected a number of calls per second above 0 and at most 1000".into()),
    }
}

fn speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 => Ok(s),
        _ => Err("expected a speed above 0 (1 is real time, `inf` sends without pauses)".into()),
    }
}

fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = std::env::var("CALLSTREAM_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only for a person at a terminal: a file, a pipe or journald gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_config(args: &ServeArgs) -> Result<Config> {
    let mut config = Config::load(args.config.as_deref(), std::env::vars())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir.clone_from(dir);
    }
    Ok(config)
}

/// Runs the command; a failure is one line on stderr (its causes joined, each said once, no
/// backtrace: a start-up error is the operator's to fix, not a bug) and exit status 1.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("callstream: {}", explain(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes, each cause once (a cause that its parent's message already quotes
/// is not repeated).
fn explain(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

#[tokio::main]
async fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logs();
            serve(load_config(&args)?).await
        }
        Command::Demo(args) => {
            init_logs();
            demo(load_config(&args)?).await
        }
        Command::Simulate(args) => {
            init_logs();
            simulate(args).await
        }
        Command::Keys(KeysCommand::Create {
            data_dir,
            database_url,
            workspace,
            runtime,
            admin,
            expires_at,
            json,
            init,
        }) => {
            let kind = if runtime {
                KeyKind::Runtime
            } else {
                KeyKind::Api
            };
            let store = key_store(&data_dir, database_url, init).await?;
            keys_create(store.as_ref(), &workspace, kind, admin, expires_at, json).await
        }
        Command::Keys(KeysCommand::List {
            data_dir,
            database_url,
            workspace,
            json,
        }) => {
            let store = key_store(&data_dir, database_url, false).await?;
            keys_list(store.as_ref(), &workspace, json).await
        }
        Command::Keys(KeysCommand::Revoke {
            data_dir,
            database_url,
            workspace,
            key_id,
        }) => {
            let store = key_store(&data_dir, database_url, false).await?;
            let ws = store
                .workspace_by_name(&workspace)
                .await?
                .with_context(|| format!("no workspace named {workspace:?}"))?;
            let id = callstream_core::id::KeyId::parse(&key_id)
                .map_err(|_| anyhow::anyhow!("{key_id:?} is not a key id (key_…)"))?;
            let earlier = store
                .keys(&ws.id)
                .await?
                .into_iter()
                .find(|k| k.id == id)
                .and_then(|k| k.revoked_at);
            if let Some(at) = earlier {
                println!(
                    "{key_id} was already revoked at {}; nothing changed",
                    callstream_core::time::format(&at)
                );
                return Ok(());
            }
            if !store
                .revoke_key(&ws.id, &id, callstream_core::time::now())
                .await?
            {
                bail!("no key {key_id} in workspace {workspace:?}");
            }
            println!("revoked {key_id}: it is refused from now on, and its streams close");
            Ok(())
        }
        Command::Migrate { database_url } => {
            init_logs();
            PgStore::migrate(&database_url)
                .await
                .context("migrating the PostgreSQL schema")?;
            println!("the PostgreSQL schema is up to date");
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(config: Config) -> Result<()> {
    let data_dir = config.data_dir.clone();
    let database = config.database_url.is_some();
    let server = callstream_server::start(config).await?;
    // What a newcomer does next.
    let keys = if database {
        "`callstream keys create --database-url … --workspace NAME`".to_owned()
    } else {
        format!(
            "`callstream keys create --data-dir {} --workspace NAME`",
            data_dir.display()
        )
    };
    tracing::info!(
        "the dashboard is at http://{}/ ; make an API key with {keys}, and a runtime key (for a call runtime's ingest) with --runtime added (README, \"A 5-minute tour\")",
        server.addr()
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown();
    server.wait().await.context("shutdown")?;
    Ok(())
}

async fn open_store(data_dir: &Path) -> Result<SqliteStore> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    Ok(SqliteStore::open(&data_dir.join("callstream.db")).await?)
}

/// Creates a workspace (if needed) and a key; returns `(workspace, key id, secret)`.
async fn create_key(
    store: &dyn Store,
    workspace: &str,
    kind: KeyKind,
    admin: bool,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<(
    callstream_core::Workspace,
    callstream_core::id::KeyId,
    String,
)> {
    if workspace.trim().is_empty() || workspace.len() > 100 {
        bail!("--workspace must be 1 to 100 characters");
    }
    let ws = store.ensure_workspace(workspace).await?;
    let key = auth::mint_with(&ws.id, kind, admin, expires_at);
    store.insert_key(&key.record).await?;
    Ok((ws, key.record.id, key.secret))
}

async fn keys_create(
    store: &dyn Store,
    workspace: &str,
    kind: KeyKind,
    admin: bool,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    json: bool,
) -> Result<()> {
    let (ws, key_id, secret) = create_key(store, workspace, kind, admin, expires_at).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "workspace_id": ws.id, "auth_id": ws.auth_id, "key": secret, "key_id": key_id })
        );
    } else {
        let expires =
            expires_at.map_or_else(|| "never".to_owned(), |t| callstream_core::time::format(&t));
        println!(
            "workspace  {} ({})\nauth_id    {}\n{} key    {secret}\nkey id     {key_id}\nadmin      {}\nexpires    {expires}\n\nThe key is shown once; only its hash is stored.",
            ws.name,
            ws.id,
            ws.auth_id,
            kind.as_str(),
            if admin {
                "yes: it may also list, create and revoke the workspace's keys (/v1/keys)"
            } else {
                "no"
            },
        );
    }
    Ok(())
}

async fn keys_list(store: &dyn Store, workspace: &str, json: bool) -> Result<()> {
    let ws = store
        .workspace_by_name(workspace)
        .await?
        .with_context(|| format!("no workspace named {workspace:?}"))?;
    let keys = store.keys(&ws.id).await?;
    let now = callstream_core::time::now();
    let state = |k: &callstream_store::KeyRecord| {
        if k.revoked_at.is_some() {
            "revoked"
        } else if k.live_at(now) {
            "active"
        } else {
            "expired"
        }
    };
    let fmt =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| callstream_core::time::format(&t));
    if json {
        let list: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "key_id": k.id, "kind": k.kind.as_str(), "admin": k.admin, "hint": k.hint,
                    "created_at": callstream_core::time::format(&k.created_at),
                    "expires_at": fmt(k.expires_at), "revoked_at": fmt(k.revoked_at),
                    "state": state(k),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    println!("workspace {} ({})", ws.name, ws.id);
    let mut rows = vec![[
        "KEY ID".to_owned(),
        "KIND".to_owned(),
        "ADMIN".to_owned(),
        "STATE".to_owned(),
        "STARTS WITH".to_owned(),
        "CREATED".to_owned(),
        "EXPIRES".to_owned(),
        "REVOKED".to_owned(),
    ]];
    let or_dash = |t: Option<chrono::DateTime<chrono::Utc>>| fmt(t).unwrap_or_else(|| "-".into());
    for k in &keys {
        rows.push([
            k.id.to_string(),
            k.kind.as_str().to_owned(),
            if k.admin { "yes" } else { "no" }.to_owned(),
            state(k).to_owned(),
            format!("{}…", k.hint),
            callstream_core::time::format(&k.created_at),
            or_dash(k.expires_at),
            or_dash(k.revoked_at),
        ]);
    }
    print!("{}", columns(&rows));
    if keys.is_empty() {
        println!("(no keys)");
    }
    Ok(())
}

/// Rows as left-aligned columns, two spaces apart (widths in characters).
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

async fn simulate(args: SimulateArgs) -> Result<()> {
    let mut runtime = Runtime::new(&args.server, &args.runtime_key)?;
    if let Some(source) = audio_source(&args.audio)? {
        runtime = runtime.with_audio(source);
    }
    let stop = CancellationToken::new();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal_stop.cancel();
    });
    // The runtime's socket outlives the calls: on a stop, each call still sends its end over it.
    let socket = CancellationToken::new();
    runtime.serve_commands(socket.clone()).await?;
    let options = RunOptions {
        calls: (args.calls > 0).then_some(args.calls),
        rate: args.rate,
        speed: args.speed,
        seed: args.seed,
        conversations: args.conversations,
    };
    let report = callstream_simulator::run(&runtime, &options, &stop).await;
    socket.cancel();
    let what = if args.conversations {
        "calls and conversations"
    } else {
        "calls"
    };
    println!(
        "{} {what} played, {} cut short by the stop, {} failed",
        report.completed, report.stopped, report.failed
    );
    if report.failed > 0 {
        bail!(
            "{} simulated calls failed (see the log above)",
            report.failed
        );
    }
    Ok(())
}

async fn demo(mut config: Config) -> Result<()> {
    // The demo runs on this machine, and so do the services a newcomer points its audio streams
    // and callbacks at: private targets are allowed here (never by default in `serve`).
    config.allow_private_webhook_targets = true;
    let data_dir = config.data_dir.clone();
    let server = callstream_server::start(config).await?;
    let store = server.state().store();
    let (workspace, api_key_id, api_key) =
        create_key(store, "demo", KeyKind::Api, false, None).await?;
    let (_, _, runtime_key) = create_key(store, "demo", KeyKind::Runtime, false, None).await?;
    let base = format!("http://{}", server.addr());
    let sign_in = server
        .state()
        .sign_in_links()
        .mint(&workspace.id, api_key_id);
    let runtime =
        Runtime::new(&base, &runtime_key)?.with_audio(callstream_simulator::audio::Source::Synth);
    let stop = CancellationToken::new();

    // One long call (about an hour) so that the printed curl command keeps showing a live
    // transcript, plus a steady flow of ordinary calls that start and end.
    // The runtime's socket outlives the calls: on Ctrl-C, each call still sends its end over it,
    // so no call is left in progress behind the demo.
    let socket = CancellationToken::new();
    runtime.serve_commands(socket.clone()).await?;
    let showcase = callstream_simulator::script::long_script(42, 120);
    let long_phone = showcase.phone.clone();
    let call = runtime.create_call(&showcase).await?;
    let (showcase_runtime, showcase_stop, showcase_call) =
        (runtime.clone(), stop.clone(), call.clone());
    // A long call runs at all times: when one is ended (by the tour's end_call, say), the next
    // starts, so every step of the tour has a live call to work on.
    let showcase_task = tokio::spawn(async move {
        let mut call = showcase_call;
        loop {
            if let Err(err) = showcase_runtime
                .play_created(&call, &showcase, 1.0, &showcase_stop)
                .await
                && !showcase_stop.is_cancelled()
            {
                tracing::warn!(error = %err, "the demo's long call stopped");
            }
            if showcase_stop.is_cancelled() {
                break;
            }
            match showcase_runtime.create_call(&showcase).await {
                Ok(next) => {
                    tracing::info!(call = %next.id, "the demo's long call ended; another one started");
                    call = next;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "could not start another long call");
                    break;
                }
            }
        }
    });
    let flow_runtime = runtime.clone();
    let flow_stop = stop.clone();
    let flow = tokio::spawn(async move {
        let options = RunOptions {
            calls: None,
            rate: 0.2,
            speed: 1.0,
            seed: 1000,
            conversations: true,
        };
        callstream_simulator::run(&flow_runtime, &options, &flow_stop).await
    });

    println!(
        "\ncallstream demo is running on {base}\n\n\
         Open the dashboard (a one-time sign-in link, good for 15 minutes; afterwards sign in\n\
         with the API key):\n\
         \x20 {base}/#sign-in={sign_in}\n\n\
         API key (workspace \"demo\"):  {api_key}\n\
         Runtime key:                 {runtime_key}\n\n\
         The long call (about an hour; when it ends, another starts, with the same phone):\n\
         \x20 {} (phone {long_phone}; the dashboard lists calls by phone)\n\n\
         Watch a live transcript in the terminal:\n\
         \x20 curl -N -H 'Authorization: Bearer {api_key}' {base}/v1/calls/{}/transcript/stream\n\n\
         Call events and control over WebSocket (send {{\"type\":\"send_dtmf\",\"id\":\"1\",\"digits\":\"5\"}}):\n\
         \x20 ws://{addr}/v1/calls/{}/stream?token={api_key}\n\n\
         Stream the long call's audio to your WebSocket service (seed 004; auth_id {auth_id}):\n\
         \x20 curl -H 'X-Auth-ID: {auth_id}' -H 'X-Auth-Token: {api_key}' -H 'Content-Type: application/json' \\\n\
         \x20   -d '{{\"service_url\":\"ws://127.0.0.1:9000/\",\"bidirectional\":true}}' \\\n\
         \x20   {base}/api/v1/Account/{auth_id}/Call/{}/Stream/\n\
         \x20 (private addresses such as 127.0.0.1 are allowed in the demo only)\n\n\
         List calls:   curl -H 'Authorization: Bearer {api_key}' '{base}/v1/calls?status=in_progress'\n\
         Metrics:      curl {base}/metrics\n\n\
         Data directory (for `callstream keys … --data-dir`): {data_dir}\n\n\
         Press Ctrl-C to stop.\n",
        call.id,
        call.id,
        call.id,
        call.id,
        addr = server.addr(),
        auth_id = workspace.auth_id,
        data_dir = data_dir.display(),
    );

    wait_for_signal().await;
    tracing::info!("stopping the demo");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = showcase_task.await;
        let _ = flow.await;
    })
    .await;
    socket.cancel();
    server.shutdown();
    server.wait().await.context("shutdown")?;
    Ok(())
}
