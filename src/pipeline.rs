//! Where an accepted event goes before the webhook is answered: onto the durable spool (the forwarder
//! takes it to Kafka later), or straight to Kafka, waiting for its acknowledgement (`BRIDGE_DELIVERY=sync`).
//!
//! The webhook handler calls [`Pipeline::submit`] and answers according to its result; it knows
//! neither the spool nor the producer. Both modes refuse first what Kafka would refuse for good after
//! the bridge said OK (a record larger than the topic takes), and what no spool record can hold.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::GroupEvent;
use crate::message::TooLong;
use crate::publisher::{PublishError, Publisher};
use crate::spool::{Spool, SpoolError};

/// Where an accepted event goes before the webhook is answered.
#[derive(Clone)]
pub enum Pipeline {
    /// Answer once the event is durable in the local spool (default).
    Spool { spool: Spool, publisher: Arc<Publisher> },
    /// Answer once Kafka acknowledged the event.
    Sync { publisher: Arc<Publisher>, timeout: Duration },
}

/// Why an event was not taken. The handler maps each to an HTTP status and a FAIL envelope.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Spool(SpoolError),
    #[error("{0}")]
    Kafka(PublishError),
    #[error("Kafka did not acknowledge the event within {} ms", .0.as_millis())]
    KafkaTimeout(Duration),
    #[error(
        "the event would be a {size}-byte record; the topic takes at most {limit} bytes (max.message.bytes)"
    )]
    TooLargeForTopic { size: usize, limit: u64 },
    #[error("the event cannot be stored: {0}")]
    Unencodable(TooLong),
}

impl Pipeline {
    fn publisher(&self) -> &Publisher {
        match self {
            Pipeline::Spool { publisher, .. } | Pipeline::Sync { publisher, .. } => publisher,
        }
    }

    /// Takes `event`: `Ok` once it is durable on the spool, or (sync) once Kafka acknowledged it.
    pub async fn submit(&self, event: &GroupEvent) -> Result<(), PipelineError> {
        let message = event.to_message();
        // Every field fits its length prefix in the spool record (GroupIds are bounded at the edge;
        // this keeps any other field that could ever grow from reaching `encode`'s panic).
        message.check().map_err(PipelineError::Unencodable)?;
        // Kafka would refuse it for good after we said OK: refuse it now instead.
        if let Err((size, limit)) = self.publisher().limits().check_size(&message) {
            return Err(PipelineError::TooLargeForTopic { size, limit });
        }
        match self {
            Pipeline::Spool { spool, .. } => {
                spool.append(message.to_bytes()).await.map(drop).map_err(PipelineError::Spool)
            }
            Pipeline::Sync { publisher, timeout } => {
                let pending = publisher.send(&message).map_err(PipelineError::Kafka)?;
                match tokio::time::timeout(*timeout, pending).await {
                    Ok(Ok(_)) => {
                        publisher.metrics().delivered(message.received_at_ms, message.event_time_ms);
                        Ok(())
                    }
                    Ok(Err(e)) => Err(PipelineError::Kafka(e)),
                    Err(_) => Err(PipelineError::KafkaTimeout(*timeout)),
                }
            }
        }
    }
}
