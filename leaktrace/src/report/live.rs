//! The live status line on stderr while tracing: redrawn in place on a terminal, a plain line
//! every few seconds otherwise (a log file or CI output), nothing with `--quiet`.

use std::{
    io::{IsTerminal as _, Write as _},
    time::{Duration, Instant},
};

/// How often a plain (non-terminal) status line is written.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct LiveStatus {
    enabled: bool,
    terminal: bool,
    last_plain: Option<Instant>,
    drawn: bool,
}

impl LiveStatus {
    pub fn new(quiet: bool) -> Self {
        Self {
            enabled: !quiet,
            terminal: std::io::stderr().is_terminal(),
            last_plain: None,
            drawn: false,
        }
    }

    /// Whether an [`update`](Self::update) now would show its line: what goes into the line
    /// (naming the fastest grower) need not be worked out otherwise.
    pub fn due(&self) -> bool {
        self.enabled
            && (self.terminal || self.last_plain.is_none_or(|t| t.elapsed() >= PLAIN_EVERY))
    }

    /// Shows `line` (built only when it will be shown).
    pub fn update(&mut self, line: impl FnOnce() -> String) {
        if !self.due() {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.terminal {
            // Carriage return and erase-line: redraw in place.
            let _ = write!(err, "\r\x1b[K{}", line());
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{}", line());
            self.last_plain = Some(Instant::now());
        }
        let _ = err.flush();
    }

    /// Ends the in-place line so what follows starts on its own line.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}
