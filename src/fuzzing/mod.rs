//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz), here so that a stable `cargo test`
//! runs them too (tests/it/fuzz_corpus.rs: the checked-in seed corpus and pseudo-random inputs).
//! Not part of the broker: each function takes arbitrary bytes, drives one piece of the wire
//! handling with them and panics when an invariant breaks.
//!
//! - `frame`: `codec::decode` (the hand-coded basic.publish / basic.ack paths and amq-protocol's
//!   parser), checked against amq-protocol's own frame parser and re-encoding.
//! - `content_header`: `Properties::parse` against amq-protocol's property parser, the header
//!   lookups the broker makes on a message (CC, x-delay, x-death), and the content encoder.
//! - `field_table`: amq-protocol's table parser behind the nesting bound, then Warren's table
//!   handling: queue argument checks, JSON conversions, headers-exchange matching.
//! - `connection`: a structure-aware client (methods and fields picked from the input, encoded
//!   with amq-protocol, plus raw bytes) run through a real connection over an in-memory pipe
//!   against an in-memory broker; the run must end in bounded time, every frame the broker sends
//!   must be well formed, and afterwards the broker must be consistent (no consumer or unacked
//!   message left behind, no connection registered, message memory back to zero once the vhost
//!   is emptied) and still serve a fresh, well-behaved connection.

use crate::amqp::codec::{self, Frame, Method};
use crate::amqp::nesting;
use crate::broker::message::{Message, Properties};
use crate::broker::Broker;
use crate::config::Config;
use crate::state::{Listeners, ServerState};
use amq_protocol::frame::{gen_frame, parse_frame, AMQPFrame};
use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, tx, AMQPClass};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString};
use arbitrary::Unstructured;
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;

mod parsers;
mod script;
mod session;
pub use parsers::{content_header, field_table, frame};
use script::*;
pub use session::{connection, in_memory_state};

fn gen_table_bytes(t: &FieldTable) -> Option<Vec<u8>> {
    cookie_factory::gen_simple(gen_field_table(t), Vec::new()).ok()
}

fn gen_frame_bytes(f: &AMQPFrame) -> Option<Vec<u8>> {
    cookie_factory::gen_simple(gen_frame(f), Vec::new()).ok()
}

fn gen_props_bytes(p: &AMQPProperties) -> Option<Vec<u8>> {
    cookie_factory::gen_simple(gen_properties(p), Vec::new()).ok()
}

// ---- frame --------------------------------------------------------------------------------
