//! How far the initial load is: per table rows and bytes copied against the planner's
//! estimate, shown as progress bars on a terminal, as periodic log lines otherwise, and
//! as the `pg2lake_snapshot_rows*` gauges.
//!
//! Counters are atomics bumped once per chunk by the copying tasks; rendering reads them
//! from a reporter task, so the copy never waits for output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::metrics;
use crate::terminal;

/// How often the bars take the counters.
const REDRAW_INTERVAL: Duration = Duration::from_millis(250);
/// A table with an estimate: bar, percent, rows, rate and ETA. The estimate comes from
/// planner statistics, so rows may pass it (the bar's length then follows the rows).
const ESTIMATED: &str = "{prefix} [{bar:24}] {percent:>3}% {pos}/~{len} rows {per_sec} ETA {eta}";
/// A table without an estimate (never analyzed).
const UNESTIMATED: &str = "{prefix} [{spinner}] {pos} rows {per_sec}";
/// A table committed.
const DONE: &str = "{prefix} [{bar:24}] {msg}";

/// The style of `template` (one of the constants above, which parse).
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#-")
}

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
    /// Its bar, on a terminal.
    bar: Option<ProgressBar>,
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

    /// Moves the bar to the counters; once the table is committed, leaves it showing
    /// the result. `name_width` aligns the names.
    fn update_bar(&self, name_width: usize) {
        let Some(bar) = &self.bar else {
            return;
        };
        if bar.is_finished() {
            return;
        }
        let (rows, _) = self.totals();
        bar.set_prefix(format!("{:<name_width$}", self.name));
        if rows > bar.length().unwrap_or(0) && self.estimated_rows.is_some() {
            bar.set_length(rows);
        }
        bar.set_position(rows);
        if self.is_finished() {
            bar.set_length(rows.max(1));
            bar.set_position(rows.max(1));
            bar.set_style(style(DONE));
            bar.finish_with_message(self.result());
        } else {
            bar.set_message(format!("{:.0} rows/s", self.rate()));
        }
    }

    /// Rows per second since the copy began.
    fn rate(&self) -> f64 {
        let elapsed = self.elapsed().as_secs_f64();
        if elapsed > 0.0 {
            self.totals().0 as f64 / elapsed
        } else {
            0.0
        }
    }

    /// What a committed table's line says after its bar.
    fn result(&self) -> String {
        format!(
            "done {} rows in {:.1}s ({:.0} rows/s)",
            self.totals().0,
            self.elapsed().as_secs_f64(),
            self.rate()
        )
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
        let bar = self.terminal.then(|| {
            let bar = match estimated_rows {
                Some(estimate) => ProgressBar::new(estimate).with_style(style(ESTIMATED)),
                None => ProgressBar::no_length().with_style(style(UNESTIMATED)),
            };
            terminal::bars().add(bar.with_prefix(name.clone()))
        });
        let table = Arc::new(TableProgress {
            name,
            estimated_rows,
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            started: OnceLock::new(),
            finished: Mutex::new(None),
            bar,
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
        for table in &tables {
            table.update_bar(width);
        }
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

    /// Draws the final state and leaves it on screen, as lines above whatever is
    /// printed next (the bars themselves are cleared: the last would not end its line).
    pub fn finish(&self) {
        if !self.terminal {
            return;
        }
        self.draw();
        let tables = self.snapshot();
        let width = tables.iter().map(|t| t.name.len()).max().unwrap_or(0);
        let bars = terminal::bars();
        for table in &tables {
            if let Some(bar) = &table.bar {
                let done = "#".repeat(24);
                let _ = bars.println(format!("{:<width$} [{done}] {}", table.name, bar.message()));
                bars.remove(bar);
            }
        }
        let _ = bars.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_templates_parse() {
        for template in [ESTIMATED, UNESTIMATED, DONE] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn bars_follow_the_counters_past_the_estimate_and_show_the_result() {
        // Not a terminal here: the bars are drawn to a hidden target.
        let progress = Progress::new(true);
        let table = progress.add("public.t".into(), Some(1000));
        table.start();
        table.add(250, 0);
        progress.draw();
        let bar = table.bar.clone().expect("a bar");
        assert_eq!((bar.position(), bar.length()), (250, Some(1000)));
        table.add(2000, 0);
        progress.draw();
        assert_eq!(
            (bar.position(), bar.length()),
            (2250, Some(2250)),
            "past the estimate"
        );
        table.finish();
        progress.finish();
        assert!(bar.is_finished());
        assert!(
            bar.message().starts_with("done 2250 rows in "),
            "{}",
            bar.message()
        );
        let unknown = progress.add("public.u".into(), None);
        assert_eq!(unknown.bar.as_ref().and_then(ProgressBar::length), None);
        assert!(
            Progress::new(false)
                .add("public.v".into(), None)
                .bar
                .is_none()
        );
    }
}
