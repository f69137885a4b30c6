//! Integration tests: the bridge binary against a real Apache Kafka broker (started once per run by
//! `scripts/kafka`), reading back what was produced.

mod helpers;

mod compose;
mod delivery;
mod directory;
mod drain;
mod durability;
mod faults;
mod hostile;
mod lifecycle;
mod observability;
mod refusals;
mod startup;
mod status_page;
