//! Definitions commands: export_definitions, import_definitions (the whole broker's
//! definitions as RabbitMQ's JSON, through /api/definitions).

use crate::{Ctx, Failure, Res};
use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};
use std::io::Read;

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
pub enum Verb {
    /// Write all definitions as JSON to a file ("-": standard output).
    ExportDefinitions { path: String },
    /// Import definitions from a JSON file ("-": standard input).
    ImportDefinitions { path: String },
}

pub fn run(verb: &Verb, ctx: &Ctx) -> Res<()> {
    let Ctx { c, out, .. } = ctx;
    match verb {
        Verb::ExportDefinitions { path } => {
            let d = c.call("GET", "/api/definitions", None, "definitions")?;
            let text = serde_json::to_string_pretty(&d).context("encoding definitions")?;
            if path == "-" {
                println!("{text}");
            } else {
                std::fs::write(path, text + "\n")
                    .with_context(|| format!("cannot write {path}"))
                    .map_err(|e| Failure {
                        code: 73,
                        message: format!("{e:#}"),
                    })?;
                out.info(&format!("Exported definitions for vhosts to \"{path}\""));
            }
        }
        Verb::ImportDefinitions { path } => {
            let mut text = String::new();
            let r = if path == "-" {
                std::io::stdin().read_to_string(&mut text).map(|_| ())
            } else {
                std::fs::read_to_string(path).map(|t| text = t)
            };
            r.map_err(|e| Failure {
                code: 66,
                message: format!("cannot read {path}: {e}"),
            })?;
            let d: Value = serde_json::from_str(&text).map_err(|e| Failure {
                code: 65,
                message: format!("{path} is not valid JSON: {e}"),
            })?;
            out.info(&format!(
                "Importing definitions in JSON from a file at \"{path}\" ..."
            ));
            c.call("POST", "/api/definitions", Some(&d), "definitions")?;
            out.info("Imported definitions.");
            out.done(&json!({"result": "ok"}));
        }
    }
    Ok(())
}
