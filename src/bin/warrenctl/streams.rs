//! Stream commands: list_stream_consumers (each reader of a stream with its offsets and lag),
//! stream_status (what a stream holds, and its named consumers' tracked offsets).

use crate::client::{list, seg};
use crate::output::cell;
use crate::{Ctx, Failure, Res};
use clap::Subcommand;
use serde_json::Value;

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Verb {
    /// Consumers of the vhost's streams, or of one stream: offsets and lag (columns: stream
    /// consumer_tag name active next_offset acked_offset lag_messages lag_seconds).
    ListStreamConsumers { stream: Option<String> },
    /// A stream's offsets, size on disk, timestamps, and its named consumers' tracked offsets.
    StreamStatus { name: String },
}

const COLUMNS: [&str; 8] = [
    "stream",
    "consumer_tag",
    "name",
    "active",
    "next_offset",
    "acked_offset",
    "lag_messages",
    "lag_seconds",
];

/// The stream queue `name`: its single-queue view (with consumer_details); exit code 1 if
/// there is no such queue, 65 if it is not a stream.
fn stream(ctx: &Ctx, name: &str) -> Res<Value> {
    let q = ctx.c.call(
        "GET",
        &format!("/api/queues/{}/{}", ctx.vh, seg(name)),
        None,
        &format!("stream '{name}' in {}", ctx.in_vhost),
    )?;
    if q.get("stream").is_none_or(Value::is_null) {
        return Err(Failure {
            code: 65,
            message: format!("queue '{name}' in {} is not a stream", ctx.in_vhost),
        });
    }
    Ok(q)
}

/// One row per stream consumer of `q`: its `stream` object flattened, with the stream's name
/// and the consumer's tag.
fn consumer_rows(q: &Value) -> Vec<Value> {
    let stream = q.get("name").cloned().unwrap_or(Value::Null);
    let details = q.get("consumer_details").and_then(Value::as_array);
    details
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let s = c.get("stream")?.as_object()?;
            let mut row = s.clone();
            row.insert("stream".into(), stream.clone());
            row.insert(
                "consumer_tag".into(),
                c.get("consumer_tag").cloned().unwrap_or(Value::Null),
            );
            Some(Value::Object(row))
        })
        .collect()
}

pub fn run(verb: &Verb, ctx: &Ctx) -> Res<()> {
    let Ctx {
        cli, c, out, v, vh, ..
    } = ctx;
    match verb {
        Verb::ListStreamConsumers { stream: one } => {
            let names: Vec<String> = match one {
                Some(n) => vec![n.clone()],
                None => list(c, &format!("/api/queues/{vh}"), &ctx.in_vhost)?
                    .iter()
                    .filter(|q| q.get("type").and_then(Value::as_str) == Some("stream"))
                    .filter_map(|q| q.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect(),
            };
            let mut rows = Vec::new();
            for n in &names {
                match stream(ctx, n) {
                    Ok(q) => rows.extend(consumer_rows(&q)),
                    // A stream deleted since the listing is no longer listed.
                    Err(f) if one.is_none() && f.code == 1 => {}
                    Err(f) => return Err(f),
                }
            }
            match one {
                Some(n) => out.info(&format!(
                    "Listing consumers of stream '{n}' in vhost {v} ..."
                )),
                None => out.info(&format!("Listing stream consumers in vhost {v} ...")),
            }
            out.table("stream_consumers", &rows, &[], &COLUMNS);
        }
        Verb::StreamStatus { name } => {
            let q = stream(ctx, name)?;
            let s = q.get("stream").cloned().unwrap_or(Value::Null);
            if cli.json {
                out.done(&s);
                return Ok(());
            }
            out.info(&format!("Status of stream '{name}' in vhost {v} ..."));
            for k in [
                "first_offset",
                "next_offset",
                "messages",
                "segments",
                "disk_bytes",
                "first_timestamp",
                "last_timestamp",
            ] {
                println!("{k}: {}", cell(s.get(k)));
            }
            println!("consumers: {}", cell(q.get("consumers")));
            let tracked = s
                .get("tracked")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            println!("tracked consumers: {}", tracked.len());
            if !tracked.is_empty() {
                let columns = ["name", "next_offset", "lag_messages"];
                out.table("tracked", &tracked, &[], &columns);
            }
        }
    }
    Ok(())
}
