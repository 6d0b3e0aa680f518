//! The coordinator: opens the channels, spreads the subscribers over worker processes, samples
//! the server's memory and CPU, publishes timestamped events at the scenario's rate, and merges
//! what the workers measured into one report.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};

use crate::marker;
use crate::procstat::{self, Sample};
use crate::subscriber::{LATE_MICROS, Plan, Report, Second, decode, merge_timelines};
use crate::targets::{self, Endpoints, TargetKind, Transport};

/// The named workloads of issue 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// 8,000 calls with 2 subscribers each, 5 events/s per call.
    Wide,
    /// 1 call with 10,000 subscribers at 100 events/s.
    Hot,
    /// As many open streams as the machine allows, heartbeats only: memory per stream.
    Idle,
    /// 1,000 healthy subscribers and 100 that never read.
    Slow,
    /// Everything from the flags.
    Custom,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    #[arg(long, value_enum, default_value = "callstream")]
    pub target: TargetKind,
    #[arg(long, value_enum, default_value = "sse")]
    pub transport: Transport,
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Channels (calls); overrides the scenario.
    #[arg(long)]
    pub channels: Option<usize>,
    /// Subscribers per channel; overrides the scenario.
    #[arg(long)]
    pub per_channel: Option<usize>,
    /// Subscribers that never read (spread over the channels); overrides the scenario.
    #[arg(long)]
    pub stuck: Option<usize>,
    /// Events per second per channel; overrides the scenario.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of publishing (or, for idle, of holding); overrides the scenario.
    #[arg(long)]
    pub duration: Option<u64>,
    /// Seconds of publishing before measuring: frames sent then are neither counted nor timed,
    /// and CPU is sampled from its end. The slow scenario's default gives the stuck clients time
    /// to fill their socket buffers, so that what is measured is a server with stuck clients,
    /// not one with 10 % more subscribers; overrides the scenario.
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Subscribers per worker process (each process may hold 20,000 files here).
    #[arg(long, default_value_t = 8000)]
    pub per_worker: usize,
    /// Parallel publisher connections.
    #[arg(long, default_value_t = 4)]
    pub publish_lanes: usize,
    /// How often the publisher sends what is due, in milliseconds. Everything due in one tick
    /// goes out together, stamped together, so a coarse tick turns many calls' independent
    /// events into one burst and measures the burst's queue, not the server.
    #[arg(long, default_value_t = 1)]
    pub publish_tick_ms: u64,
    /// Process ids of the server under test, for memory and CPU (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Label for the report (e.g. "callstream", "nchan").
    #[arg(long)]
    pub label: Option<String>,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// End the run's calls afterwards (`call.completed`), as a runtime would, so that runs one
    /// after another against one gateway (the soak, `bench/soak.sh`) do not pile up live calls.
    /// callstream only.
    #[arg(long)]
    pub end_channels: bool,
}

struct Shape {
    channels: usize,
    per_channel: usize,
    stuck: usize,
    rate: f64,
    duration: u64,
    warmup: u64,
}

fn shape(args: &RunArgs) -> Shape {
    let preset = match args.scenario {
        Scenario::Wide => Shape {
            channels: 8000,
            per_channel: 2,
            stuck: 0,
            rate: 5.0,
            duration: 20,
            warmup: 0,
        },
        Scenario::Hot => Shape {
            channels: 1,
            per_channel: 10_000,
            stuck: 0,
            rate: 100.0,
            duration: 20,
            warmup: 0,
        },
        Scenario::Idle => Shape {
            channels: 1000,
            per_channel: 15,
            stuck: 0,
            rate: 0.0,
            duration: 10,
            warmup: 0,
        },
        Scenario::Slow => Shape {
            channels: 10,
            per_channel: 100,
            stuck: 100,
            rate: 20.0,
            duration: 20,
            // Until its socket buffers are full, a stuck client costs the server what a healthy
            // one does. With a 64 KiB send buffer (callstream's default; compare.sh gives Nchan
            // the same) a stuck client's send queue stops at some 95 KB: at 20 frames/s that is
            // 40 s over SSE (~140 B frames) and 20 s over WebSocket (~300 B), then 3 s more to
            // fill its 64-frame queue (`ss -tm` and frames_dropped_total, docs/benchmarks.md).
            warmup: 50,
        },
        Scenario::Custom => Shape {
            channels: 1,
            per_channel: 1,
            stuck: 0,
            rate: 1.0,
            duration: 5,
            warmup: 0,
        },
    };
    Shape {
        channels: args.channels.unwrap_or(preset.channels),
        per_channel: args.per_channel.unwrap_or(preset.per_channel),
        stuck: args.stuck.unwrap_or(preset.stuck),
        rate: args.rate.unwrap_or(preset.rate),
        duration: args.duration.unwrap_or(preset.duration),
        warmup: args.warmup.unwrap_or(preset.warmup),
    }
}

/// The result of one run.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub label: String,
    pub scenario: Scenario,
    pub target: TargetKind,
    pub transport: Transport,
    pub channels: usize,
    pub subscribers: u64,
    pub stuck: usize,
    pub rate_per_channel: f64,
    pub publish_tick_ms: u64,
    /// callstream's runtime-socket answers (`all` or `errors`); the same for every target.
    pub runtime_acks: crate::targets::RuntimeAcks,
    /// Seconds measured (after the warm-up).
    pub seconds: f64,
    /// Seconds of warm-up before them.
    pub warmup_seconds: u64,
    /// Events published while measuring.
    pub published: u64,
    pub publish_errors: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub frames_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub server_before: Sample,
    pub server_connected: Sample,
    pub server_after: Sample,
    pub pss_per_stream_bytes: f64,
    pub cpu_cores: f64,
    /// The generator's CPU (itself and its workers) while publishing.
    pub generator_cpu_cores: f64,
    /// Share of each CPU's time the host (hypervisor) stole while publishing: frames wait
    /// while it does, whatever the server (see `callstream-bench jitter`).
    pub host_steal_per_cpu: Vec<f64>,
    /// Per second of sending after the warm-up: the worst latency, and the frames later than
    /// 10 ms (all subscribers). One long pause shows as one bad second with many late frames.
    #[serde(default)]
    pub timeline: Vec<Second>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    frames: u64,
}

async fn next_report(w: &mut Worker) -> Result<Report> {
    let line = w.lines.next_line().await?.context("worker ended")?;
    Ok(serde_json::from_str(&line)?)
}

pub async fn run(args: RunArgs) -> Result<Outcome> {
    let s = shape(&args);
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| format!("{:?}", args.target).to_lowercase());
    eprintln!("[{label}] opening {} channels", s.channels);
    let channels = targets::open_channels(args.target, &args.endpoints, s.channels).await?;

    let mut subs = Vec::new();
    for ch in &channels {
        for _ in 0..s.per_channel {
            subs.push(targets::subscription(
                args.target,
                args.transport,
                &args.endpoints,
                ch,
                false,
            )?);
        }
    }
    for i in 0..s.stuck {
        subs.push(targets::subscription(
            args.target,
            // Stuck clients speak the run's transport: over WebSocket, an upgraded socket that is
            // never read.
            args.transport,
            &args.endpoints,
            &channels[i % channels.len()],
            true,
        )?);
    }
    let total = subs.len();
    let before = procstat::sample(&args.pids);

    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for (w, chunk) in subs.chunks(args.per_worker.max(1)).enumerate() {
        let mut child = tokio::process::Command::new(&exe)
            .arg("subscribe")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let plan = Plan {
            worker: u8::try_from(w).unwrap_or(u8::MAX),
            subscriptions: chunk.to_vec(),
            connect_concurrency: 256,
        };
        stdin
            .write_all(format!("{}\n", serde_json::to_string(&plan)?).as_bytes())
            .await?;
        workers.push(Worker {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            frames: 0,
        });
    }
    let mut connected = 0u64;
    for w in &mut workers {
        match tokio::time::timeout(Duration::from_secs(300), next_report(w))
            .await
            .context("workers did not connect in 5 minutes")??
        {
            Report::Ready {
                connected: c,
                failed,
                first_error,
            } => {
                connected += c;
                if failed > 0 {
                    eprintln!(
                        "[{label}] {failed} subscriptions failed: {}",
                        first_error.unwrap_or_default()
                    );
                }
            }
            other => bail!("unexpected worker report {other:?}"),
        }
    }
    eprintln!("[{label}] {connected} of {total} subscriptions open");
    // Let the server settle (lazy allocations, first heartbeats) before measuring memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_connect = procstat::sample(&args.pids);
    // The generator's own CPU (this process and its workers), over the same window as the
    // server's: on a shared machine, what it takes is not the server's to use.
    let generator_pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(workers.iter().filter_map(|w| w.child.id()))
        .collect();
    // CPU is measured from here, or from the end of the warm-up.
    let mut server_start = procstat::cpu(&args.pids);
    let mut generator_start = procstat::cpu(&generator_pids);
    let mut host_start = procstat::HostSample::now();

    let healthy = (channels.len() * s.per_channel) as u64;
    let publisher = targets::publisher(args.target, &args.endpoints, args.publish_lanes).await?;
    let started = Instant::now();
    let warmup = Duration::from_secs(s.warmup);
    // Frames stamped before this are the warm-up's; the workers learn it before any is sent.
    let measure_from = marker::now_nanos() + u64::try_from(warmup.as_nanos()).unwrap_or(0);
    if s.warmup > 0 {
        eprintln!("[{label}] warming up for {} s", s.warmup);
    }
    // Also without a warm-up: the workers' timeline counts seconds from it.
    for w in &mut workers {
        w.stdin
            .write_all(format!("measure {measure_from}\n").as_bytes())
            .await?;
    }
    let mut measuring = s.warmup == 0;
    let mut measured_since = started;
    // Events sent after the warm-up, per channel: what each subscriber should receive.
    let mut published = vec![0u64; channels.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(args.publish_tick_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let total_rate = s.rate * channels.len() as f64;
    let mut sent_total = 0u64;
    let mut next_channel = 0usize;
    let mut last_report = Instant::now();
    let deadline = started + warmup + Duration::from_secs(s.duration);
    while Instant::now() < deadline {
        tick.tick().await;
        if !measuring && started.elapsed() >= warmup {
            measuring = true;
            measured_since = Instant::now();
            server_start = procstat::cpu(&args.pids);
            generator_start = procstat::cpu(&generator_pids);
            host_start = procstat::HostSample::now();
        }
        if total_rate > 0.0 {
            let due = (started.elapsed().as_secs_f64() * total_rate) as u64;
            let mut batch = Vec::new();
            while sent_total < due {
                let ch = next_channel % channels.len();
                next_channel += 1;
                sent_total += 1;
                let (stamp, at) = marker::stamp();
                if at >= measure_from {
                    published[ch] += 1;
                }
                batch.push((channels[ch].clone(), stamp));
            }
            if !batch.is_empty() {
                publisher.publish(batch).await;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            let mut frames = 0;
            for w in &mut workers {
                // Progress lines arrive once a second; read what is there without waiting.
                while let Ok(Ok(Report::Progress { frames: f })) =
                    tokio::time::timeout(Duration::from_millis(1), next_report(w)).await
                {
                    w.frames = f;
                }
                frames += w.frames;
            }
            eprint!(
                "\r[{label}] {:>4.0}s published {sent_total:>9} delivered {frames:>10}   ",
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    }
    let seconds = measured_since.elapsed().as_secs_f64();
    // CPU only while frames are still in flight (see `procstat::sample`); memory once they
    // have landed.
    let during = procstat::cpu(&args.pids);
    let generator_during = procstat::cpu(&generator_pids);
    let host_during = procstat::HostSample::now();
    // In-flight frames land; then the workers stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = procstat::sample(&args.pids);
    eprintln!();
    let mut delivered = 0u64;
    let mut timeline = Vec::new();
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for w in &mut workers {
        w.stdin.write_all(b"stop\n").await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(30), next_report(w))
                .await
                .context("worker did not finish")??
            {
                Report::Done {
                    frames,
                    histogram: h,
                    timeline: t,
                    ..
                } => {
                    delivered += frames;
                    histogram.add(decode(&h)?)?;
                    merge_timelines(&mut timeline, &t);
                    break;
                }
                Report::Progress { .. } | Report::Ready { .. } => {}
            }
        }
        let _ = w.child.kill().await;
    }
    let expected: u64 = published.iter().sum::<u64>() * s.per_channel as u64;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let outcome = Outcome {
        label,
        scenario: args.scenario,
        target: args.target,
        transport: args.transport,
        channels: channels.len(),
        subscribers: healthy,
        stuck: s.stuck,
        rate_per_channel: s.rate,
        publish_tick_ms: args.publish_tick_ms.max(1),
        runtime_acks: args.endpoints.runtime_acks,
        seconds,
        warmup_seconds: s.warmup,
        published: published.iter().sum(),
        publish_errors: publisher.errors.load(std::sync::atomic::Ordering::Relaxed),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        frames_per_sec: delivered as f64 / seconds,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: histogram.max() as f64 / 1000.0,
        pss_per_stream_bytes: if connected > 0 {
            (at_connect.pss_kib.saturating_sub(before.pss_kib) as f64 * 1024.0) / connected as f64
        } else {
            0.0
        },
        cpu_cores: procstat::cpu_cores(&server_start, &during),
        generator_cpu_cores: procstat::cpu_cores(&generator_start, &generator_during),
        host_steal_per_cpu: procstat::steal_shares(&host_start, &host_during),
        server_before: before,
        server_connected: at_connect,
        server_after: after,
        timeline,
    };
    if args.end_channels {
        targets::close_channels(args.target, &args.endpoints, &channels).await?;
    }
    print_table(&outcome);
    print_worst_seconds(&outcome);
    if let Some(path) = &args.json {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{}", serde_json::to_string(&outcome)?)?;
    }
    Ok(outcome)
}

fn print_table(o: &Outcome) {
    println!(
        "| {} | {:?} | {:?} | {} subs ({} stuck) on {} ch @ {}/s | {:.0} frames/s | lost {} of {} | p50 {:.2} ms | p99 {:.2} ms | p99.9 {:.2} ms | max {:.1} ms | {:.0} B/stream | {:.2} cores | generator {:.2} cores | host steal {} |",
        o.label,
        o.scenario,
        o.transport,
        o.subscribers,
        o.stuck,
        o.channels,
        o.rate_per_channel,
        o.frames_per_sec,
        o.lost,
        o.expected,
        o.p50_ms,
        o.p99_ms,
        o.p999_ms,
        o.max_ms,
        o.pss_per_stream_bytes,
        o.cpu_cores,
        o.generator_cpu_cores,
        steal_text(&o.host_steal_per_cpu)
    );
}

/// The three worst seconds of the timeline, on stderr (the table row stays one line).
fn print_worst_seconds(o: &Outcome) {
    let mut worst: Vec<(usize, &Second)> = o.timeline.iter().enumerate().collect();
    worst.sort_by_key(|(_, s)| std::cmp::Reverse(s.max_micros));
    let text: Vec<String> = worst
        .iter()
        .take(3)
        .filter(|(_, s)| s.max_micros > 0)
        .map(|(i, s)| {
            format!(
                "second {i}: max {:.1} ms, {} frames > {} ms",
                s.max_micros as f64 / 1000.0,
                s.late,
                LATE_MICROS / 1000
            )
        })
        .collect();
    if !text.is_empty() {
        eprintln!("[{}] worst seconds: {}", o.label, text.join("; "));
    }
}

/// Each CPU's stolen share, e.g. "1.2 % / 3.4 %".
pub fn steal_text(shares: &[f64]) -> String {
    if shares.is_empty() {
        return "–".into();
    }
    shares
        .iter()
        .map(|s| format!("{:.1} %", s * 100.0))
        .collect::<Vec<_>>()
        .join(" / ")
}
