//! Letting go of links all at once. Closing a uprobe link removes its breakpoints, then waits
//! out the kernel's grace periods (RCU tasks trace, the uretprobes' SRCU) before the close
//! returns; a raw tracepoint's waits for RCU too. One after another, the 17 links of an exact
//! window on the bench's busy Node service took from under a second to over two minutes to
//! let go (a 2-CPU machine at full load: each wait took seconds), and the target kept trapping
//! on every link not yet closed: one round lost 28 % of its throughput that way. Closed
//! together, one thread each, every breakpoint goes at once and the waits overlap.

/// Drops every link, each on a thread of its own, and returns once all are closed. A thread
/// that cannot be started (a container's limit on tasks) drops its closure, and with it the
/// link, here and now: closed one after another, as before, never left open.
pub(super) fn release_all<L: Send>(links: Vec<L>) {
    if links.len() < 2 {
        drop(links);
        return;
    }
    std::thread::scope(|scope| {
        for link in links {
            // Err: the closure, link and all, was dropped by the failed spawn.
            let _ = std::thread::Builder::new().spawn_scoped(scope, move || drop(link));
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Link<'a>(&'a AtomicUsize);

    impl Drop for Link<'_> {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn every_link_is_closed_before_it_returns() {
        let closed = AtomicUsize::new(0);
        release_all((0..17).map(|_| Link(&closed)).collect());
        assert_eq!(closed.load(Ordering::Relaxed), 17);
        release_all(vec![Link(&closed)]);
        assert_eq!(closed.load(Ordering::Relaxed), 18);
    }
}
