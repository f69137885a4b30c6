//! Integration tests: the bridge binary against a real Apache Kafka broker (started once per run by
//! `scripts/kafka`; the `cluster` tests start a three-node cluster), reading back what was produced.

mod helpers;

mod cluster;
mod compose;
mod delivery;
mod directory;
mod drain;
mod durability;
mod exactly_once;
mod faults;
mod hostile;
mod lifecycle;
mod observability;
mod refusals;
mod replicas;
mod snapshot;
mod startup;
mod status_page;
mod tencent;
