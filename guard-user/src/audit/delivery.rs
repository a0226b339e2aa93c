//! The reconnect loop every destination shares (collectors in `forward`,
//! syslog servers in `syslog`): run a session until it fails, mark the
//! destination down (alerting once per outage), wait with a doubling backoff,
//! and try again, until the trail shuts down. A session reports the peer as
//! reached through `Link::connected`, which alerts that the destination is back.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use super::spool::Destination;
use super::trail::{Shared, TrailAlert};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One connection to a destination, as its kind speaks it.
pub(crate) trait Session {
    /// Connects and delivers until something fails; it never ends otherwise.
    /// Calls `link.connected()` once the peer is reached and accepted.
    async fn run(&self, link: &mut Link<'_>) -> anyhow::Result<Infallible>;
}

/// A destination as its sessions see it: the trail, the destination's live
/// state, and whether its current outage has been alerted (so that each
/// outage raises one `DestinationDown` and one `DestinationBack`).
pub(crate) struct Link<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) dest: &'a Destination,
    outage_reported: bool,
}

impl Link<'_> {
    /// The session reached its peer: the destination is connected again.
    pub(crate) fn connected(&mut self) {
        if !self.dest.set_connected(true) && self.outage_reported {
            self.shared.alert(TrailAlert::DestinationBack {
                destination: self.dest.name.clone(),
            });
        }
        self.outage_reported = false;
        self.dest.set_error(None);
    }

    /// A session failed with `error`. Whether the destination had been
    /// connected (so the failure starts a new outage).
    fn disconnected(&mut self, error: String) -> bool {
        let was_connected = self.dest.set_connected(false);
        self.dest.set_error(Some(error.clone()));
        if !self.outage_reported {
            self.outage_reported = true;
            self.shared.alert(TrailAlert::DestinationDown {
                destination: self.dest.name.clone(),
                error,
            });
        }
        was_connected
    }
}

/// Delivers to one destination until the trail shuts down.
pub(crate) async fn deliver<S: Session>(shared: Arc<Shared>, dest: Arc<Destination>, session: S) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut backoff = MIN_BACKOFF;
    let mut link = Link {
        shared: &shared,
        dest: &dest,
        outage_reported: false,
    };
    loop {
        let outcome = tokio::select! {
            outcome = session.run(&mut link) => outcome,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let error = match outcome {
            Err(e) => format!("{e:#}"),
            Ok(never) => match never {},
        };
        if link.disconnected(error) {
            backoff = MIN_BACKOFF;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
