//! `warrenctl`: a rabbitmqctl-like command line for Warren, a client of its HTTP API only.
//!
//! Output is rabbitmqctl-shaped: an informational line ("Listing queues for vhost / ..."),
//! unless `--quiet`, then a header row and tab-separated rows; `--json` prints JSON instead.
//! Exit codes follow rabbitmqctl's (sysexits): 0 success, 64 usage, 65 bad input refused by
//! the broker, 69 broker unreachable, 70 unexpected broker error, 77 authentication refused,
//! 1 no such object.
//!
//! The parts: `client` (requests to the API, answers turned into exit codes), `output`
//! (informational lines, tables, JSON), and one module per group of commands, each with its
//! arguments and what it does: `status`, `list` (the list_* commands), `queues`, `connections`,
//! `users` (vhosts, users, permissions), `definitions`, `limits` (tenant limits, topic
//! permissions), `super_streams`, `cluster`.
#![forbid(unsafe_code)]

mod client;
mod cluster;
mod connections;
mod definitions;
mod limits;
mod list;
mod output;
mod queues;
mod status;
mod streams;
mod super_streams;
mod users;

use clap::{Parser, Subcommand};
use client::Client;
use output::Out;
use std::process::ExitCode;

/// Manage a Warren broker over its HTTP management API.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "warrenctl: manage a Warren broker over its HTTP management API (rabbitmqctl-like)"
)]
struct Cli {
    /// Management API base URL.
    #[arg(
        long,
        env = "WARREN_URL",
        default_value = "http://127.0.0.1:15672",
        global = true
    )]
    url: String,
    /// CA certificate(s) (PEM) to verify an https:// --url against, instead of the
    /// built-in public roots.
    #[arg(long, env = "WARREN_CACERT", global = true)]
    cacert: Option<std::path::PathBuf>,
    #[arg(
        long,
        short = 'u',
        env = "WARREN_USERNAME",
        default_value = "guest",
        global = true
    )]
    username: String,
    #[arg(long, env = "WARREN_PASSWORD", default_value = "guest", global = true)]
    password: String,
    /// Virtual host (rabbitmqctl's -p).
    #[arg(long, short = 'p', default_value = "/", global = true)]
    vhost: String,
    /// Print JSON instead of tab-separated text.
    #[arg(long, global = true)]
    json: bool,
    /// Leave out informational lines.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    /// Leave out the header row of listings.
    #[arg(long, short = 's', global = true)]
    no_table_headers: bool,
    #[command(subcommand)]
    verb: Verb,
}

// The commands, one group per module; flattened, so each is a top-level command as in
// rabbitmqctl (`warrenctl list_queues`), listed in this order in `--help`.
#[derive(Debug, Subcommand)]
enum Verb {
    #[command(flatten)]
    Status(status::Verb),
    #[command(flatten)]
    List(list::Verb),
    #[command(flatten)]
    Queues(queues::Verb),
    #[command(flatten)]
    Streams(streams::Verb),
    #[command(flatten)]
    Connections(connections::Verb),
    #[command(flatten)]
    Users(users::Verb),
    #[command(flatten)]
    Definitions(definitions::Verb),
    /// Tenant limits and topic permissions.
    #[command(flatten)]
    Limits(limits::Verb),
    /// Super streams (partitioned streams).
    #[command(flatten)]
    SuperStreams(super_streams::Verb),
    /// Cluster membership.
    #[command(flatten)]
    Cluster(cluster::Verb),
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            code: 70,
            message: format!("{e:#}"),
        }
    }
}

type Res<T> = Result<T, Failure>;

/// What every command works with: the options, the client, the output, and the vhost (`-p`)
/// as given (`v`), as a URL path segment (`vh`) and as messages name it (`in_vhost`).
struct Ctx<'a> {
    cli: &'a Cli,
    c: Client,
    out: Out<'a>,
    v: &'a str,
    vh: String,
    in_vhost: String,
}

fn run(cli: &Cli) -> Res<()> {
    let v = &cli.vhost;
    let ctx = Ctx {
        cli,
        c: Client::new(cli)?,
        out: Out { cli },
        v,
        vh: client::seg(v),
        in_vhost: format!("vhost '{v}'"),
    };
    match &cli.verb {
        Verb::Status(verb) => status::run(verb, &ctx),
        Verb::List(verb) => list::run(verb, &ctx),
        Verb::Queues(verb) => queues::run(verb, &ctx),
        Verb::Streams(verb) => streams::run(verb, &ctx),
        Verb::Connections(verb) => connections::run(verb, &ctx),
        Verb::Users(verb) => users::run(verb, &ctx),
        Verb::Definitions(verb) => definitions::run(verb, &ctx),
        Verb::Limits(verb) => limits::run(verb, &ctx),
        Verb::SuperStreams(verb) => super_streams::run(verb, &ctx),
        Verb::Cluster(verb) => cluster::run(verb, &ctx),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if usage { 64 } else { 0 });
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("Error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
