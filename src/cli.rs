//! The command line: `pg2lake run|snapshot|check|status --config FILE`, plus the global
//! `--log-format` and `--log-level`. Parsing only; `main` maps the command to work and
//! errors to exit codes (clap itself exits with 2 on bad usage, matching the contract).

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Environment variable that supplies `--config` when the flag is absent.
pub const CONFIG_ENV: &str = "PG2LAKE_CONFIG";
/// Default of `--log-level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// pg2lake streams committed PostgreSQL changes into Delta Lake tables of Parquet files.
#[derive(Debug, Parser)]
#[command(name = "pg2lake", version, propagate_version = true)]
pub struct Cli {
    /// Log format: auto is pretty on a terminal and JSON lines otherwise.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto, value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// Log filter: a level (error, warn, info, debug, trace) or directives such as
    /// pg2lake=debug,info. RUST_LOG, when set, takes precedence.
    #[arg(long, global = true, default_value = DEFAULT_LOG_LEVEL, value_name = "LEVEL")]
    pub log_level: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Snapshot the tables new to the lake, then stream changes until stopped.
    Run {
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Load the configured tables once (initial load), then exit.
    Snapshot {
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
        /// Copy the tables without creating a replication slot (a one-off export that
        /// streaming cannot continue from).
        #[arg(long)]
        no_slot: bool,
    },
    /// Preflight: Postgres settings, privileges, replica identity and lake access.
    Check {
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Show the slot lag and each table's position in the lake.
    Status {
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Erase one person (a data subject) from the lake, all history included: every row
    /// of theirs is removed from the change logs and mirrors that hold them, the files
    /// that held them are deleted at once, and time travel to versions before the erasure
    /// ends. Values are given in clear; hashed columns are matched by their hash. Exit 0
    /// when every table was erased, 1 when one failed.
    Forget {
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
        /// The table (`schema.name`); repeat for several. With --where, default: every
        /// table that has the columns named.
        #[arg(long = "table", value_name = "SCHEMA.NAME")]
        tables: Vec<String>,
        /// The subject's key in the table, as JSON: '{"id": 42}'.
        #[arg(long, value_name = "JSON", conflicts_with = "where_columns")]
        key: Option<String>,
        /// Columns that name the subject, as JSON: '{"email": "ana@example.com"}'.
        #[arg(long = "where", value_name = "JSON", required_unless_present = "key")]
        where_columns: Option<String>,
        /// Report what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compact the lake's small files and VACUUM the files no retained version needs,
    /// once (for a CronJob; `run` does it on its own every lake.compaction.interval).
    /// Exit 0 when every table was maintained, 1 when one failed.
    Maintain {
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
        /// Only this table (`schema.name`); repeat for several. Default: every table in
        /// the lake.
        #[arg(long = "table", value_name = "SCHEMA.NAME")]
        tables: Vec<String>,
        /// List what would be rewritten and deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Prove that the lake equals the source at one position, table by table; exit 0
    /// when equal, 1 when a table differs (the keys are listed), 3 when verifying failed.
    Verify {
        /// The configuration file.
        #[command(flatten)]
        config: ConfigFile,
        /// Only this table (`schema.name`); repeat for several. Default: every table.
        #[arg(long = "table", value_name = "SCHEMA.NAME")]
        tables: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Read the source from this read replica (a standby of the source) instead of
        /// the primary; the position is checked against the primary's slot.
        #[arg(long, value_name = "URL")]
        source_url: Option<String>,
        /// Read at most this many source rows per second (spares a busy primary).
        #[arg(long, value_name = "ROWS")]
        max_rows_per_second: Option<u64>,
        /// How long to wait for `pg2lake run` to commit the position compared at.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        /// The statement timeout of each read of the source (the snapshot lives as long).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
        statement_timeout: std::time::Duration,
        /// Push the outcome as metrics to this Prometheus Pushgateway (http://host:port),
        /// for a scheduled run.
        #[arg(long, value_name = "URL")]
        push_url: Option<String>,
    },
}

/// The `--config FILE` argument shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct ConfigFile {
    /// Path of the YAML configuration file.
    #[arg(long = "config", short = 'c', env = CONFIG_ENV, value_name = "FILE")]
    pub path: PathBuf,
}

impl Command {
    /// The configuration file the command was given.
    pub fn config_path(&self) -> &Path {
        match self {
            Command::Run { config }
            | Command::Snapshot { config, .. }
            | Command::Check { config }
            | Command::Status { config, .. }
            | Command::Maintain { config, .. }
            | Command::Forget { config, .. }
            | Command::Verify { config, .. } => &config.path,
        }
    }

    /// The subcommand's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run { .. } => "run",
            Command::Snapshot { .. } => "snapshot",
            Command::Check { .. } => "check",
            Command::Status { .. } => "status",
            Command::Verify { .. } => "verify",
            Command::Maintain { .. } => "maintain",
            Command::Forget { .. } => "forget",
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pg2lake").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_with_defaults() {
        let cli = parse(&["run", "--config", "/etc/pg2lake.yaml"]).unwrap();
        assert!(matches!(cli.command, Command::Run { .. }));
        assert_eq!(cli.command.config_path(), Path::new("/etc/pg2lake.yaml"));
        assert_eq!(cli.command.name(), "run");
        assert_eq!(cli.log_format, LogFormat::Auto);
        assert_eq!(cli.log_level, "info");
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let cli = parse(&[
            "run",
            "--config",
            "c.yaml",
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert_eq!(cli.log_level, "debug");
        let cli = parse(&[
            "--log-format",
            "pretty",
            "--log-level",
            "pg2lake=trace,info",
            "check",
            "-c",
            "c.yaml",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Pretty);
        assert_eq!(cli.log_level, "pg2lake=trace,info");
        assert!(matches!(cli.command, Command::Check { .. }));
    }

    #[test]
    fn subcommand_flags() {
        let cli = parse(&["snapshot", "--config", "c.yaml", "--no-slot"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Snapshot { no_slot: true, .. }
        ));
        let cli = parse(&["snapshot", "--config", "c.yaml"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Snapshot { no_slot: false, .. }
        ));
        let cli = parse(&["status", "--config", "c.yaml", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Status { json: true, .. }));
        assert_eq!(cli.command.name(), "status");
        assert_eq!(
            parse(&["run", "--config", "c.yaml", "--json"])
                .unwrap_err()
                .kind(),
            ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn bad_usage_is_rejected() {
        assert_eq!(
            parse(&[]).unwrap_err().kind(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(
            parse(&["stream", "--config", "c"]).unwrap_err().kind(),
            ErrorKind::InvalidSubcommand
        );
        assert_eq!(
            parse(&["run", "--config", "c", "--log-format", "xml"])
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidValue
        );
        // Without the flag the file comes from PG2LAKE_CONFIG; only check when unset.
        if std::env::var_os(CONFIG_ENV).is_none() {
            assert_eq!(
                parse(&["run"]).unwrap_err().kind(),
                ErrorKind::MissingRequiredArgument
            );
        }
        assert_eq!(
            parse(&["stream"]).unwrap_err().exit_code(),
            2,
            "bad usage exits with 2"
        );
    }
}
