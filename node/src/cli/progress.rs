//! Progress of long operations (a new node catching up, a read model rebuilt): a bar on a
//! terminal, plain lines otherwise, so a script or a log collector gets text it can read and
//! a person at a terminal gets one line that moves.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Plain lines come at most this often (and at the end).
const LINE_EVERY: Duration = Duration::from_secs(2);

pub struct Progress {
    what: String,
    unit: &'static str,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
}

impl Progress {
    /// `what` names the operation ("node 4 catching up"), `unit` what is counted ("entries").
    pub fn new(what: impl Into<String>, unit: &'static str) -> Self {
        let what = what.into();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} {prefix} ({percent}%, {eta} left)",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_message(what.clone());
            bar.set_prefix(unit);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            what,
            unit,
            bar,
            last_line: None,
        }
    }

    /// `done` of `total` so far.
    pub fn set(&mut self, done: u64, total: u64) {
        let done = done.min(total);
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            None => {
                if self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY) {
                    println!("{}: {}", self.what, line(done, total, self.unit));
                    self.last_line = Some(Instant::now());
                }
            }
        }
    }

    /// The end, with what it came to.
    pub fn finish(self, message: &str) {
        match self.bar {
            Some(bar) => bar.finish_with_message(format!("{}: {message}", self.what)),
            None => println!("{}: {message}", self.what),
        }
    }

    /// Stop without claiming success (the bar stays where it got to).
    pub fn abandon(self) {
        if let Some(bar) = self.bar {
            bar.abandon();
        }
    }
}

/// `120/500 entries (24%)`.
fn line(done: u64, total: u64, unit: &str) -> String {
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    format!("{done}/{total} {unit} ({percent}%)")
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_lines_say_how_far() {
        assert_eq!(super::line(120, 500, "entries"), "120/500 entries (24%)");
        assert_eq!(super::line(0, 0, "events"), "0/0 events (100%)");
        assert_eq!(super::line(7, 7, "events"), "7/7 events (100%)");
    }
}
