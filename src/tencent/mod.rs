//! Tencent Cloud Chat's REST API, read for a snapshot of an app's groups.
//!
//! Callbacks are at most once, say nothing of custom fields changed later or of member counts, and
//! know nothing of groups older than the bridge. The REST API has the whole truth: every group id
//! (`get_appid_group_list`, paged) and every group's profile (`get_group_info`, 50 a call). This
//! module is the client; [`crate::snapshot`] turns what it reads into events.
//!
//! - [`usersig`]: the credential (TLS-SIG-API v2), generated in-process from the app's secret key.
//! - [`client`]: the two calls, their documented rate limits (a limiter per API), and what each
//!   error code calls for (retry, back off, sign anew, stop).

pub mod client;
pub mod usersig;

pub use client::{ClientSettings, GroupInfo, GroupPage, InfoBatch, Lookup, RestClient, RestError};
pub use usersig::SecretKey;
