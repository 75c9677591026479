//! Status lines at the bottom of a terminal (the snapshot's progress bars), kept below
//! the log lines that scroll above them.
//!
//! ```text
//!  2026-11-25T21:40:01Z INFO snapshot of table planned table=public.orders …   ← logs scroll
//!  public.orders   [#########-----------]  45%  2250000/5000000 rows  410000 rows/s  ETA 7s
//!  public.items    [####################] done 120000 rows in 0.8s                ← redrawn
//! ```
//!
//! Both go through one lock: a log record erases the status lines, is written, and the
//! lines are drawn again, so neither tears the other. Used only when stderr is a terminal;
//! otherwise progress goes to the log as structured lines.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::fmt::MakeWriter;

/// The status lines on screen now.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether log records go through [`Stderr`], so status lines can be drawn.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The writer for human-readable logs: status lines are drawn from now on when stderr
/// is a terminal.
pub fn stderr_writer() -> Stderr {
    ENABLED.store(io::stderr().is_terminal(), Ordering::Relaxed);
    Stderr
}

/// Whether status lines can be drawn: stderr is a terminal and logs go through
/// [`Stderr`] (JSON logs on a terminal would be torn by them).
pub fn status_lines_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Erases `count` lines drawn last, leaving the cursor where the first of them began.
fn erase(out: &mut impl Write, count: usize) -> io::Result<()> {
    if count > 0 {
        // Cursor up `count` lines to column 1, then clear to the end of the screen.
        write!(out, "\x1b[{count}F\x1b[J")?;
    }
    Ok(())
}

fn draw(out: &mut impl Write, lines: &[String]) -> io::Result<()> {
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// Replaces the status lines with `lines` (none clears them).
pub fn set_status(lines: Vec<String>) {
    let Ok(mut current) = LINES.lock() else {
        return;
    };
    let mut out = io::stderr().lock();
    // A terminal that went away is no reason to stop a load.
    let _ = erase(&mut out, current.len()).and_then(|()| draw(&mut out, &lines));
    let _ = out.flush();
    *current = lines;
}

/// Leaves the status lines where they are, as ordinary output, and forgets them.
pub fn keep_status() {
    if let Ok(mut current) = LINES.lock() {
        current.clear();
    }
}

/// A stderr writer for log records that keeps the status lines below them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        let current = LINES
            .lock()
            .map_err(|_| io::Error::other("status lines poisoned"))?;
        let mut out = io::stderr().lock();
        erase(&mut out, current.len())?;
        out.write_all(record)?;
        draw(&mut out, &current)?;
        out.flush()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erasing_moves_up_and_clears() {
        let mut out = Vec::new();
        erase(&mut out, 0).unwrap();
        assert!(out.is_empty());
        erase(&mut out, 3).unwrap();
        assert_eq!(out, b"\x1b[3F\x1b[J");
    }
}
