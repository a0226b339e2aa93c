//! The reconnect loop every destination shares (collectors in `forward`,
//! syslog servers in `syslog`): run a session until it fails, mark the
//! destination down (alerting once per outage), wait with a doubling backoff,
//! and try again, until the trail shuts down. A session reports the peer as
//! reached through `Outage::end`, which alerts that the destination is back.

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
    /// Calls `outage.end` once the peer is reached and accepted.
    async fn run(
        &self,
        shared: &Shared,
        dest: &Destination,
        outage: &mut Outage,
    ) -> anyhow::Result<Infallible>;
}

/// Whether the current outage of a destination has been alerted, so that
/// each outage raises one `DestinationDown` and one `DestinationBack`.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    reported: bool,
}

impl Outage {
    /// The session reached its peer: the destination is connected again.
    pub(crate) fn end(&mut self, shared: &Shared, dest: &Destination) {
        if !dest.set_connected(true) && self.reported {
            shared.alert(TrailAlert::DestinationBack {
                destination: dest.name.clone(),
            });
        }
        self.reported = false;
        dest.set_error(None);
    }

    /// Alerts that the destination is down, unless this outage already did.
    fn report(&mut self, shared: &Shared, dest: &Destination, error: String) {
        if !self.reported {
            self.reported = true;
            shared.alert(TrailAlert::DestinationDown {
                destination: dest.name.clone(),
                error,
            });
        }
    }
}

/// Delivers to one destination until the trail shuts down.
pub(crate) async fn deliver<S: Session>(shared: Arc<Shared>, dest: Arc<Destination>, session: S) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut backoff = MIN_BACKOFF;
    let mut outage = Outage::default();
    loop {
        let outcome = tokio::select! {
            outcome = session.run(&shared, &dest, &mut outage) => outcome,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let error = match outcome {
            Err(e) => format!("{e:#}"),
            Ok(never) => match never {},
        };
        // A connection that was up resets the backoff: this failure is new.
        if dest.set_connected(false) {
            backoff = MIN_BACKOFF;
        }
        dest.set_error(Some(error.clone()));
        outage.report(&shared, &dest, error);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
