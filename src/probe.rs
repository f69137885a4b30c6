//! The Kafka probe behind readiness: a metadata request every second, its result told to [`Health`]
//! and, debounced, to the log.
//!
//! Health only observes; this loop drives. It asks through the main producer's client, for the topic's
//! metadata.

use std::sync::Arc;
use std::time::Duration;

use crate::health::Health;
use crate::publisher::Publisher;

/// How often Kafka is asked for metadata.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks Kafka for metadata every second, forever, telling `health` each time it answered; logs when
/// it stops or starts answering, once the change has settled (see [`Reachability`]).
pub async fn probe_kafka(publisher: Arc<Publisher>, health: Arc<Health>) {
    let mut reachability = Reachability::new(SETTLE_AFTER);
    loop {
        let p = publisher.clone();
        let result = tokio::task::spawn_blocking(move || p.probe(PROBE_TIMEOUT)).await;
        let ok = matches!(result, Ok(Ok(())));
        if ok {
            health.kafka_answered();
        }
        match reachability.observe(ok) {
            Some(Change::Reachable) => tracing::info!("Kafka answers metadata requests"),
            Some(Change::ReachableAgain) => tracing::info!("Kafka reachable again"),
            Some(Change::Unreachable) => {
                let error = result
                    .map_or_else(|e| e.to_string(), |r| r.err().map(|e| e.to_string()).unwrap_or_default());
                tracing::warn!(%error, "Kafka does not answer metadata requests")
            }
            None => {}
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// Probe results in a row it takes before the log says Kafka's reachability changed.
const SETTLE_AFTER: u32 = 3;

/// What the log says about Kafka's reachability, debounced. A broker that is starting answers one
/// metadata request, fails the next, then settles; logging every flip would tell an operator three
/// stories in six seconds. A change is logged once `settle` results in a row agree on it. Only the log
/// is debounced: readiness and `bridge_kafka_up` follow every probe.
#[derive(Debug)]
pub struct Reachability {
    settle: u32,
    /// What the log last said (`None`: nothing yet).
    logged: Option<bool>,
    /// The result that disagrees with `logged`, and how many times in a row it came.
    candidate: bool,
    streak: u32,
}

/// A change of reachability worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Kafka answers, for the first time since the start.
    Reachable,
    /// Kafka stopped answering.
    Unreachable,
    /// Kafka answers again after it was logged unreachable.
    ReachableAgain,
}

impl Reachability {
    pub fn new(settle: u32) -> Self {
        Self { settle: settle.max(1), logged: None, candidate: false, streak: 0 }
    }

    /// Takes one probe result; returns the change to log, if this result settles one.
    pub fn observe(&mut self, ok: bool) -> Option<Change> {
        if self.logged == Some(ok) {
            self.streak = 0;
            return None;
        }
        if self.streak > 0 && self.candidate == ok {
            self.streak += 1;
        } else {
            self.candidate = ok;
            self.streak = 1;
        }
        if self.streak < self.settle {
            return None;
        }
        let change = match (self.logged, ok) {
            (None, true) => Change::Reachable,
            (Some(_), true) => Change::ReachableAgain,
            (_, false) => Change::Unreachable,
        };
        self.logged = Some(ok);
        self.streak = 0;
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The changes `results` make the log report, in order.
    fn logged(settle: u32, results: &str) -> Vec<Change> {
        let mut r = Reachability::new(settle);
        results.chars().filter_map(|c| r.observe(c == '+')).collect()
    }

    #[test]
    fn a_broker_that_flaps_while_it_recovers_yields_one_reachable_again() {
        // Up, down for a while, then the flapping of a starting broker, then up for good.
        let changes = logged(3, concat!("+++", "-----", "+-+", "-+", "++++++"));
        assert_eq!(changes, [Change::Reachable, Change::Unreachable, Change::ReachableAgain]);
    }

    #[test]
    fn a_single_failed_probe_is_not_reported() {
        assert_eq!(logged(3, "++++-++++--+++"), [Change::Reachable]);
    }

    #[test]
    fn a_broker_down_from_the_start_is_reported_once_settled() {
        assert_eq!(logged(3, "--"), []);
        assert_eq!(logged(3, "---------"), [Change::Unreachable]);
        assert_eq!(logged(3, "---+++"), [Change::Unreachable, Change::ReachableAgain]);
    }

    #[test]
    fn settle_one_reports_every_flip() {
        assert_eq!(logged(1, "+-+"), [Change::Reachable, Change::Unreachable, Change::ReachableAgain]);
    }
}
