//! The `pg2lake` binary: command line → config → telemetry → runtime.
//!
//! Exit codes: 0 success (a clean stop on SIGTERM/SIGINT included), 1 runtime failure,
//! 2 bad usage or configuration. Every failure ends with one `error: …` line on stderr.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use pg2lake::cli::{Cli, Command};
use pg2lake::config::Config;
use pg2lake::{commands, http, pipeline, telemetry};
use tokio_util::sync::CancellationToken;

/// Exit code for bad usage or configuration (clap uses it for usage errors too).
const EXIT_CONFIG: u8 = 2;
/// Exit code for a runtime failure.
const EXIT_RUNTIME: u8 = 1;

fn main() -> ExitCode {
    // Reads FAILPOINTS (see `crash_point!`); only in builds for the fault tests.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    let config = match Config::load(cli.command.config_path()) {
        Ok(config) => Arc::new(config),
        Err(err) => return fail(EXIT_CONFIG, &err),
    };
    if let Err(err) = telemetry::init_logging(cli.log_format, &cli.log_level) {
        return fail(EXIT_CONFIG, &err);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pg2lake")
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(EXIT_RUNTIME, &err),
    };
    let result = runtime.block_on(dispatch(cli.command, config));
    // Don't wait for blocking tasks (a stuck object-store upload) once the work is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let class = err.class().map(|class| class.as_str());
            tracing::error!(error = %err, class, "pg2lake failed");
            fail(err.exit_code(), &err)
        }
    }
}

/// How long a stopping `run` waits for the maintenance thread to give back its lease.
const MAINTENANCE_STOP: std::time::Duration = std::time::Duration::from_secs(5);

async fn dispatch(command: Command, config: Arc<Config>) -> Result<(), commands::CommandError> {
    match command {
        Command::Run { .. } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            start_metrics_endpoint(&config, &shutdown).await?;
            let maintenance = pg2lake::maintain::spawn(config.clone(), shutdown.clone());
            let timeout = config.shutdown_timeout;
            let stopped = shutdown.clone();
            let mut run = std::pin::pin!(pipeline::run(config, shutdown.clone()));
            let result = tokio::select! {
                biased;
                result = &mut run => result.map_err(Into::into),
                () = async {
                    stopped.cancelled().await;
                    tokio::time::sleep(timeout).await;
                } => Err(commands::CommandError::ShutdownTimeout(timeout)),
            };
            // The maintenance thread stops with the pipeline and gives back the lease it
            // holds; a few seconds at most, or its lease expires on its own.
            shutdown.cancel();
            if let Some(maintenance) = maintenance {
                let deadline = std::time::Instant::now() + MAINTENANCE_STOP;
                while !maintenance.is_finished() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
            result
        }
        Command::Snapshot { no_slot, .. } => {
            // A snapshot Job is scraped too: its progress is in the pg2lake_snapshot_*
            // gauges. SIGTERM keeps its default (exit at once): nothing half-copied is
            // ever committed.
            start_metrics_endpoint(&config, &CancellationToken::new()).await?;
            Ok(commands::snapshot::run(&config, no_slot).await?)
        }
        Command::Check { .. } => commands::check(&config).await,
        Command::Status { json, .. } => commands::status(&config, json).await,
        Command::Maintain {
            tables,
            dry_run,
            json,
            ..
        } => {
            let options = pg2lake::maintain::MaintainOptions {
                tables,
                dry_run,
                ..Default::default()
            };
            commands::maintain(&config, &options, json).await
        }
        Command::Forget {
            tables,
            key,
            where_columns,
            dry_run,
            json,
            ..
        } => {
            let parse =
                |text: Option<String>| text.map(|t| pg2lake::forget::parse_subject(&t)).transpose();
            let options = pg2lake::forget::ForgetOptions {
                tables,
                key: parse(key)?,
                where_columns: parse(where_columns)?,
                dry_run,
            };
            commands::forget(&config, &options, json).await
        }
        Command::Verify {
            tables,
            json,
            max_rows_per_second,
            wait,
            statement_timeout,
            push_url,
            source_url,
            ..
        } => {
            let options = pg2lake::verify::VerifyOptions {
                tables,
                source_url,
                max_rows_per_second,
                wait,
                statement_timeout,
            };
            commands::verify(&config, &options, json, push_url.as_deref()).await
        }
    }
}

/// Sets up the metrics and, when `metrics.listen` is set, serves them with the probes.
async fn start_metrics_endpoint(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(), commands::CommandError> {
    let metrics = pg2lake::metrics::global();
    metrics.configure(config.metrics.per_table_labels, config.memory_budget.0);
    if let Some(addr) = config.metrics.listen {
        let listener = http::bind(addr).await?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        let limits = http::ProbeLimits::from_config(config);
        tokio::spawn(http::serve(listener, limits, shutdown.clone()));
    }
    Ok(())
}

/// Cancels `token` on SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
async fn cancel_on_signal(token: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("received SIGTERM; stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT; stopping"),
    }
    token.cancel();
}

fn fail(code: u8, err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {err}");
    ExitCode::from(code)
}
