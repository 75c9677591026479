//! Progress bars at the bottom of a terminal (the snapshot's), kept below the log lines
//! that scroll above them.
//!
//! ```text
//!  2026-11-25T21:40:01Z INFO snapshot of table planned table=public.orders …   ← logs scroll
//!  public.orders [#########-----------]  45% 2250000/~5000000 rows 410000/s ETA 7s
//!  public.items  [####################] done 120000 rows in 0.8s (150000 rows/s) ← redrawn
//! ```
//!
//! indicatif draws the bars; each log record is written while they are suspended
//! (erased, the record written, drawn again), so neither tears the other. Used only when
//! stderr is a terminal and logs are human-readable; otherwise the bars are hidden and
//! progress goes to the log as structured lines.

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{MultiProgress, ProgressDrawTarget};
use tracing_subscriber::fmt::MakeWriter;

/// Whether log records go through [`Stderr`] on a terminal, so bars can be drawn.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The bars, once a load adds one.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The writer for human-readable logs: bars are drawn from now on when stderr is a
/// terminal.
pub fn stderr_writer() -> Stderr {
    ENABLED.store(io::stderr().is_terminal(), Ordering::Relaxed);
    Stderr
}

/// Whether bars can be drawn: stderr is a terminal and logs go through [`Stderr`]
/// (JSON logs on a terminal would be torn by them).
pub fn status_lines_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The bars below the log: drawn on stderr when [`status_lines_enabled`], hidden
/// otherwise.
pub fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| {
        let target = if status_lines_enabled() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        MultiProgress::with_draw_target(target)
    })
}

/// A stderr writer for log records that keeps the bars below them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        match BARS.get() {
            Some(bars) => bars.suspend(|| io::stderr().write_all(record))?,
            None => io::stderr().write_all(record)?,
        }
        Ok(record.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}
