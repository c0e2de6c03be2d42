//! Integration tests: the real broker, started in-process on ephemeral ports, driven by lapin
//! (and by raw sockets for bad input). One module per area.

mod harness;

mod basic;
mod chaos;
mod confirms;
mod durability;
mod errors;
mod exchanges;
mod interop;
mod management;
mod prometheus;
mod queues;
mod raw;
mod server;
mod warrenctl;
