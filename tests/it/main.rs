//! Integration tests: the real broker, started in-process on ephemeral ports, driven by lapin
//! (and by raw sockets for bad input). One module per area.

mod child;
mod harness;

mod auth_failures;
mod basic;
mod chaos;
mod cluster;
mod compat;
mod confirms;
mod content;
mod crash;
mod dashboard;
mod durability;
mod errors;
mod exchanges;
mod fuzz_corpus;
mod grafana;
mod hostile;
mod interop;
mod lifecycle;
mod limits;
mod management;
mod paging;
mod permissions;
mod persistence;
mod prometheus;
mod publish;
mod queues;
mod quorum;
mod rabbitmqadmin;
mod raw;
mod segment_reuse;
mod server;
mod store_errors;
mod streams;
mod tls;
mod topic_permissions;
mod warrenctl;
