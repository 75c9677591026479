//! Logging: `tracing` events to stderr, human-readable on a terminal and JSON lines
//! otherwise (so log collectors get structured fields), filtered by `RUST_LOG` when set
//! and by `--log-level` otherwise. `log` records from dependencies are captured too.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt};

/// The environment variable whose filter overrides `--log-level`.
pub const RUST_LOG: &str = "RUST_LOG";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Pretty when stderr is a terminal, JSON otherwise.
    #[default]
    Auto,
    /// One compact human-readable line per event.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The concrete format: `Auto` becomes `Pretty` on a terminal and `Json` otherwise.
    pub fn resolve(self, terminal: bool) -> LogFormat {
        match self {
            LogFormat::Auto if terminal => LogFormat::Pretty,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

/// Errors from setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error(
        "invalid log filter {value:?} from {origin}: {source} (fix: use a level such as info, or directives such as pg2lake=debug,info)"
    )]
    Filter {
        /// `RUST_LOG` or `--log-level`.
        origin: &'static str,
        /// The filter text.
        value: String,
        /// The parse error.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was installed already.
    #[error("logging is already initialized: {source}")]
    AlreadyInitialized {
        /// The error from installing the subscriber.
        #[source]
        source: tracing_subscriber::util::TryInitError,
    },
}

/// Directives put before `--log-level`: the Delta libraries log every snapshot load and
/// commit at info, hundreds of lines a minute that would drown pg2lake's own. `RUST_LOG`
/// replaces them too, so `RUST_LOG=debug` shows everything.
const QUIET_DEPENDENCIES: &str = "buoyant_kernel=warn,delta_kernel=warn,deltalake_core=warn";

/// The filter: `rust_log` when set and non-empty, else `level` with
/// [`QUIET_DEPENDENCIES`].
pub fn filter(level: &str, rust_log: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    let (origin, value, directives) = match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        Some(value) => (RUST_LOG, value, value.to_owned()),
        None => (
            "--log-level",
            level.trim(),
            format!("{QUIET_DEPENDENCIES},{}", level.trim()),
        ),
    };
    EnvFilter::builder()
        .parse(directives)
        .map_err(|source| TelemetryError::Filter {
            origin,
            value: value.to_owned(),
            source,
        })
}

/// Installs the global subscriber writing to stderr. `format` and `level` come from the
/// command line; `RUST_LOG` overrides `level`.
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    // A non-UTF-8 RUST_LOG cannot hold valid directives; treat it as unset.
    let rust_log = std::env::var(RUST_LOG).ok();
    let filter = filter(level, rust_log.as_deref())?;
    let terminal = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format.resolve(terminal) {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty | LogFormat::Auto => registry
            .with(
                fmt::layer()
                    .compact()
                    .with_ansi(terminal)
                    .with_writer(crate::terminal::stderr_writer()),
            )
            .try_init(),
    };
    installed.map_err(|source| TelemetryError::AlreadyInitialized { source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_resolves_by_terminal() {
        assert_eq!(LogFormat::Auto.resolve(true), LogFormat::Pretty);
        assert_eq!(LogFormat::Auto.resolve(false), LogFormat::Json);
        assert_eq!(LogFormat::Json.resolve(true), LogFormat::Json);
        assert_eq!(LogFormat::Pretty.resolve(false), LogFormat::Pretty);
    }

    #[test]
    fn rust_log_wins_over_the_flag() {
        let quiet_info = format!("{QUIET_DEPENDENCIES},info");
        let parsed = |text: &str| text.parse::<EnvFilter>().unwrap().to_string();
        assert_eq!(
            filter("info", None).unwrap().to_string(),
            parsed(&quiet_info)
        );
        assert_eq!(
            filter("info", Some("")).unwrap().to_string(),
            parsed(&quiet_info)
        );
        assert_eq!(
            filter("info", Some("pg2lake=debug")).unwrap().to_string(),
            "pg2lake=debug"
        );
    }

    #[test]
    fn bad_filters_name_their_origin() {
        let err = filter("info", Some("pg2lake=loud")).unwrap_err();
        assert!(err.to_string().contains("from RUST_LOG"), "{err}");
        let err = filter("verbose=[", None).unwrap_err();
        assert!(err.to_string().contains("from --log-level"), "{err}");
    }

    #[test]
    fn second_init_is_an_error() {
        // The first may fail too if another test installed a subscriber first.
        let _ = init_logging(LogFormat::Json, "info");
        assert!(matches!(
            init_logging(LogFormat::Pretty, "info"),
            Err(TelemetryError::AlreadyInitialized { .. })
        ));
        tracing::info!(check = true, "logging works");
    }
}
