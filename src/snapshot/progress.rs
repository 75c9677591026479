//! How far the initial load is: per table rows and bytes copied against the planner's
//! estimate, shown as progress bars on a terminal, as periodic log lines otherwise, and
//! as the `pg2lake_snapshot_rows*` gauges.
//!
//! Counters are atomics bumped once per chunk by the copying tasks; rendering reads them
//! from a reporter task, so the copy never waits for output.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::metrics;
use crate::terminal;

/// How often progress bars are redrawn.
const REDRAW_INTERVAL: Duration = Duration::from_millis(250);
/// Width of a progress bar, in characters.
const BAR_WIDTH: u64 = 24;

/// One table's copy.
#[derive(Debug)]
pub struct TableProgress {
    name: String,
    estimated_rows: Option<u64>,
    rows: AtomicU64,
    bytes: AtomicU64,
    /// When the first of its ranges began copying.
    started: OnceLock<Instant>,
    finished: Mutex<Option<Duration>>,
}

impl TableProgress {
    /// Marks the copy begun (by whichever of its ranges starts first).
    pub fn start(&self) {
        self.started.get_or_init(Instant::now);
    }

    fn since_start(&self) -> Duration {
        self.started.get().map_or(Duration::ZERO, Instant::elapsed)
    }
    /// Counts `rows` more rows copied and `bytes` more bytes of COPY data received.
    pub fn add(&self, rows: usize, bytes: u64) {
        let rows = rows as u64;
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let metrics = metrics::global();
        metrics
            .snapshot_rows
            .with_label_values(&[metrics.table_label(&self.name)])
            .add(i64::try_from(rows).unwrap_or(i64::MAX));
    }

    /// Rows and bytes so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Marks the table committed.
    pub fn finish(&self) {
        if let Ok(mut finished) = self.finished.lock() {
            finished.get_or_insert(self.since_start());
        }
    }

    /// Time from the start of the table's copy to its commit (or until now).
    pub fn elapsed(&self) -> Duration {
        self.finished
            .lock()
            .ok()
            .and_then(|f| *f)
            .unwrap_or_else(|| self.since_start())
    }

    fn is_finished(&self) -> bool {
        self.finished.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    /// One status line: bar, percent, rows, rate and ETA, or the result when done.
    fn line(&self, name_width: usize) -> String {
        let (rows, _) = self.totals();
        let elapsed = self.elapsed().as_secs_f64();
        let rate = if elapsed > 0.0 {
            rows as f64 / elapsed
        } else {
            0.0
        };
        let mut line = format!("{:<name_width$} ", self.name);
        if self.is_finished() {
            let _ = write!(
                line,
                "[{}] done {rows} rows in {elapsed:.1}s ({rate:.0} rows/s)",
                "#".repeat(BAR_WIDTH as usize)
            );
            return line;
        }
        match self.estimated_rows.filter(|&e| e > 0) {
            Some(estimate) => {
                // The estimate comes from planner statistics: rows may pass it.
                let filled = (rows.min(estimate) * BAR_WIDTH / estimate) as usize;
                let percent = rows * 100 / estimate;
                let eta = if rate > 0.0 && rows < estimate {
                    format!("ETA {:.0}s", (estimate - rows) as f64 / rate)
                } else {
                    "ETA -".to_owned()
                };
                let _ = write!(
                    line,
                    "[{}{}] {percent:>3}% {rows}/~{estimate} rows {rate:.0} rows/s {eta}",
                    "#".repeat(filled),
                    "-".repeat(BAR_WIDTH as usize - filled)
                );
            }
            None => {
                let _ = write!(
                    line,
                    "[{}] {rows} rows {rate:.0} rows/s",
                    "?".repeat(BAR_WIDTH as usize)
                );
            }
        }
        line
    }
}

/// Every table of one load.
#[derive(Debug, Clone)]
pub struct Progress {
    tables: Arc<Mutex<Vec<Arc<TableProgress>>>>,
    terminal: bool,
}

impl Progress {
    /// Progress of a load; bars when `terminal`, log lines otherwise.
    pub fn new(terminal: bool) -> Progress {
        Progress {
            tables: Arc::default(),
            terminal,
        }
    }

    /// Starts tracking a table expected to hold about `estimated_rows`.
    pub fn add(&self, name: String, estimated_rows: Option<u64>) -> Arc<TableProgress> {
        let metrics = metrics::global();
        metrics
            .snapshot_rows_estimated
            .with_label_values(&[metrics.table_label(&name)])
            .add(estimated_rows.map_or(0, |e| i64::try_from(e).unwrap_or(i64::MAX)));
        let table = Arc::new(TableProgress {
            name,
            estimated_rows,
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: OnceLock::new(),
            finished: Mutex::new(None),
        });
        if let Ok(mut tables) = self.tables.lock() {
            tables.push(table.clone());
        }
        table
    }

    fn snapshot(&self) -> Vec<Arc<TableProgress>> {
        self.tables.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Starts the reporter: bars redrawn several times a second on a terminal, else a log
    /// line per unfinished table every `interval`. Abort the handle when the load ends.
    pub fn report_every(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let progress = self.clone();
        tokio::spawn(async move {
            let period = if progress.terminal {
                REDRAW_INTERVAL
            } else {
                interval
            };
            let mut ticks = tokio::time::interval(period);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if progress.terminal {
                    progress.draw();
                } else {
                    progress.log();
                }
            }
        })
    }

    fn draw(&self) {
        let tables = self.snapshot();
        let width = tables.iter().map(|t| t.name.len()).max().unwrap_or(0);
        terminal::set_status(tables.iter().map(|t| t.line(width)).collect());
    }

    fn log(&self) {
        for table in self.snapshot().iter().filter(|t| !t.is_finished()) {
            let (rows, bytes) = table.totals();
            tracing::info!(
                table = %table.name,
                rows,
                estimated_rows = table.estimated_rows,
                // An estimate from the planner statistics: it may pass 100.
                percent = table.estimated_rows.filter(|&e| e > 0).map(|e| rows * 100 / e),
                bytes,
                elapsed_s = table.elapsed().as_secs(),
                "snapshot progress"
            );
        }
    }

    /// Draws the final state and leaves it on screen.
    pub fn finish(&self) {
        if self.terminal {
            self.draw();
            terminal::keep_status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_bar_percent_and_result() {
        let progress = Progress::new(false);
        let table = progress.add("public.t".into(), Some(1000));
        table.start();
        table.add(250, 0);
        let line = table.line(10);
        assert!(line.starts_with("public.t   ["), "{line}");
        assert!(line.contains("######------"), "{line}");
        assert!(line.contains(" 25% 250/~1000 rows"), "{line}");
        table.add(2000, 0);
        assert!(
            table.line(10).contains("225% 2250/~1000"),
            "past the estimate"
        );
        table.finish();
        assert!(table.line(10).contains("done 2250 rows"));
        let unknown = progress.add("public.u".into(), None);
        assert!(unknown.line(10).contains("0 rows"));
    }
}
