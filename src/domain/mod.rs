//! The normalized event: what downstream consumers read, independent of Tencent's wire format.
//!
//! Every type here can only hold a valid value: a [`GroupId`] is never empty, an [`EventTime`] is a
//! non-negative millisecond instant that formats as RFC 3339, an [`EventId`] is always derived the same
//! way. The format is documented in docs/event.md and docs/group-change.schema.json.

mod event;
mod ids;

pub use event::{Changes, GroupChangeEvent, CE_TYPE, SCHEMA_VERSION};
pub use ids::{EventId, EventTime, GroupId, InvalidValue, SdkAppId};
