//! Super stream commands, with `rabbitmq-streams`' options: add_super_stream,
//! delete_super_stream, and list_super_streams.
//!
//! Sizes take RabbitMQ's units (`500mb` is 500,000,000 bytes, `2MiB` or `2m` 2,097,152);
//! `--max-age` is a stream's `x-max-age` (`7D`, `12h`, `30m`, `10s`) or, as
//! `rabbitmq-streams` takes it, an ISO 8601 duration (`P7D`, `PT10M30S`).

use crate::client::{list, seg};
use crate::{Ctx, Failure, Res};
use clap::{ArgGroup, Subcommand};
use serde_json::{json, Map, Value};

/// The variants are named after the commands, hence the shared suffixes.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Verb {
    /// Add a super stream: an exchange and its partition streams NAME-0… (or NAME-KEY).
    #[command(group(ArgGroup::new("parts").args(["partitions", "binding_keys"])))]
    AddSuperStream {
        name: String,
        /// The number of partitions (default 3, as rabbitmq-streams).
        #[arg(long)]
        partitions: Option<u32>,
        /// Comma-separated binding keys, one partition each (rabbitmq-streams:
        /// --routing-keys).
        #[arg(long = "binding-keys", alias = "routing-keys", value_delimiter = ',')]
        binding_keys: Option<Vec<String>>,
        /// How publishers reach a partition: `key` (a direct exchange, publishing with a
        /// binding key) or `hash` (any routing key, hashed onto the partitions).
        #[arg(long, default_value = "key")]
        routing: String,
        /// x-max-length-bytes of each partition (e.g. 20gb, 500mb, 1000000).
        #[arg(long = "max-length-bytes")]
        max_length_bytes: Option<String>,
        /// x-max-age of each partition (7D, 12h, or ISO 8601: P7D, PT10M30S).
        #[arg(long = "max-age")]
        max_age: Option<String>,
        /// x-stream-max-segment-size-bytes of each partition (e.g. 500mb).
        #[arg(long = "stream-max-segment-size-bytes")]
        stream_max_segment_size_bytes: Option<String>,
    },
    /// Delete a super stream: its exchange and its partition streams.
    DeleteSuperStream { name: String },
    /// Super streams (default columns: name routing partitions).
    ListSuperStreams { columns: Vec<String> },
}

fn usage(message: String) -> Failure {
    Failure { code: 64, message }
}

/// A size with RabbitMQ's units: none (bytes), `kb`/`KB`/`mb`/`MB`/`gb`/`GB`/`tb`/`TB`
/// (powers of 1000), `k`/`kiB`/`KiB`, `m`/`MiB`, `g`/`GiB`, `t`/`TiB` (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits].parse().ok()?;
    let unit: u64 = match &s[digits..] {
        "" => 1,
        "kb" | "KB" | "kB" => 1000,
        "mb" | "MB" => 1000u64.pow(2),
        "gb" | "GB" => 1000u64.pow(3),
        "tb" | "TB" => 1000u64.pow(4),
        "k" | "K" | "kiB" | "KiB" => 1024,
        "m" | "M" | "MiB" => 1024u64.pow(2),
        "g" | "G" | "GiB" => 1024u64.pow(3),
        "t" | "T" | "TiB" => 1024u64.pow(4),
        _ => return None,
    };
    n.checked_mul(unit)
}

/// An `x-max-age`: given as a stream takes it (`7D`), or an ISO 8601 duration (`P1Y2M3DT4H5M6S`,
/// a year 365 days and a month 30, as rabbitmq-streams counts them) turned into seconds (`Ns`).
pub fn parse_age(s: &str) -> Option<String> {
    let Some(iso) = s.strip_prefix('P') else {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let unit_ok = matches!(&s[digits..], "Y" | "M" | "D" | "h" | "m" | "s");
        return (digits > 0 && unit_ok).then(|| s.to_owned());
    };
    let (date, time) = iso.split_once('T').unwrap_or((iso, ""));
    let mut total: u64 = 0;
    let mut any = false;
    for (part, units) in [
        (
            date,
            &[
                ('Y', 365 * 86_400),
                ('M', 30 * 86_400),
                ('W', 7 * 86_400),
                ('D', 86_400),
            ][..],
        ),
        (time, &[('H', 3600), ('M', 60), ('S', 1)][..]),
    ] {
        let mut rest = part;
        let mut at = 0;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let n: u64 = rest[..digits].parse().ok()?;
            let c = rest[digits..].chars().next()?;
            let k = units[at..].iter().position(|&(u, _)| u == c)?;
            total = total.checked_add(n.checked_mul(units[at + k].1)?)?;
            at += k + 1;
            any = true;
            rest = &rest[digits + 1..];
        }
    }
    (any && total > 0).then(|| format!("{total}s"))
}

pub fn run(verb: &Verb, ctx: &Ctx) -> Res<()> {
    let Ctx {
        c,
        out,
        v,
        vh,
        in_vhost,
        ..
    } = ctx;
    match verb {
        Verb::AddSuperStream {
            name,
            partitions,
            binding_keys,
            routing,
            max_length_bytes,
            max_age,
            stream_max_segment_size_bytes,
        } => {
            let mut body = Map::new();
            match binding_keys {
                Some(keys) => body.insert("binding_keys".into(), json!(keys)),
                None => body.insert("partitions".into(), json!(partitions.unwrap_or(3))),
            };
            body.insert("routing".into(), json!(routing));
            let mut args = Map::new();
            for (arg, opt, given) in [
                ("x-max-length-bytes", "--max-length-bytes", max_length_bytes),
                (
                    "x-stream-max-segment-size-bytes",
                    "--stream-max-segment-size-bytes",
                    stream_max_segment_size_bytes,
                ),
            ] {
                if let Some(s) = given {
                    let n =
                        parse_size(s).ok_or_else(|| usage(format!("{opt}: not a size: '{s}'")))?;
                    args.insert(arg.into(), json!(n));
                }
            }
            if let Some(s) = max_age {
                let age = parse_age(s).ok_or_else(|| {
                    usage(format!(
                        "--max-age: not an age (7D, 12h, 30m) nor an ISO 8601 duration \
                         (P7D, PT10M30S): '{s}'"
                    ))
                })?;
                args.insert("x-max-age".into(), json!(age));
            }
            if !args.is_empty() {
                body.insert("arguments".into(), Value::Object(args));
            }
            out.info(&format!("Adding super stream '{name}' to vhost '{v}' ..."));
            let made = c.call(
                "PUT",
                &format!("/api/super-streams/{vh}/{}", seg(name)),
                Some(&Value::Object(body)),
                in_vhost,
            )?;
            out.info(&format!("Super stream {name} has been created"));
            out.done(&made);
        }
        Verb::DeleteSuperStream { name } => {
            out.info(&format!(
                "Deleting super stream '{name}' from vhost '{v}' ..."
            ));
            c.call(
                "DELETE",
                &format!("/api/super-streams/{vh}/{}", seg(name)),
                None,
                &format!("super stream '{name}' in {in_vhost}"),
            )?;
            out.info(&format!("Super stream {name} has been deleted"));
            out.done(&json!({"result": "ok"}));
        }
        Verb::ListSuperStreams { columns } => {
            let items = list(c, &format!("/api/super-streams/{vh}"), in_vhost)?;
            out.info(&format!("Listing super streams for vhost {v} ..."));
            out.table(
                "super_streams",
                &items,
                columns,
                &["name", "routing", "partitions"],
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_rabbitmq_units() {
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("2mb"), Some(2_000_000));
        assert_eq!(parse_size("2MiB"), Some(2_097_152));
        assert_eq!(parse_size("2k"), Some(2048));
        assert_eq!(parse_size("1gb"), Some(1_000_000_000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5xb"), None);
    }

    #[test]
    fn ages_as_streams_and_iso_8601() {
        assert_eq!(parse_age("7D").as_deref(), Some("7D"));
        assert_eq!(parse_age("12h").as_deref(), Some("12h"));
        // What rabbitmq-streams 3.10 stored for these.
        assert_eq!(parse_age("P7D").as_deref(), Some("604800s"));
        assert_eq!(parse_age("PT10M30S").as_deref(), Some("630s"));
        assert_eq!(parse_age("P1Y2M").as_deref(), Some("36720000s"));
        assert_eq!(parse_age("P5DT8H").as_deref(), Some("460800s"));
        assert_eq!(parse_age("P"), None);
        assert_eq!(parse_age("PT"), None);
        assert_eq!(parse_age("P1H"), None);
        assert_eq!(parse_age("7 days"), None);
        assert_eq!(parse_age("D"), None);
    }
}
