//! The command line: `pushi [--config FILE]` runs the server, `pushi apps ...` manages the
//! MongoDB app registry.
//!
//! Owns: argument parsing (clap) and the exit codes. Must not touch: the server's state.

pub mod apps;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit codes scripts can trust.
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// The registry failed (unreachable, write refused, invalid document) or the config
    /// file is invalid.
    pub const FAILED: i32 = 1;
    /// Unknown command, flag or setting, or an invalid value (clap's own code too).
    pub const USAGE: i32 = 2;
    /// No app with that id.
    pub const NOT_FOUND: i32 = 3;
    /// No `[mongodb]` section: apps come from the config file.
    pub const NO_REGISTRY: i32 = 4;
}

/// The config used when neither `--config` nor `PUSHI_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "config.toml";

/// `pushi`'s arguments.
#[derive(Debug, Parser)]
#[command(
    name = "pushi",
    version,
    about = "A Pusher-compatible real-time server",
    after_help = "Environment variables PUSHI_<SECTION>__<KEY> override the config file \
                  (PUSHI_SERVER__PORT=6002, PUSHI_MONGODB__URI=mongodb://...)."
)]
pub struct Args {
    /// Config file [default: $PUSHI_CONFIG, then ./config.toml when it exists]
    #[arg(short, long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do; without one, run the server.
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Args {
    /// The config file to read: `--config`, then `$PUSHI_CONFIG`, then `./config.toml` if it
    /// exists, else none (built-in defaults).
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config
            .clone()
            .or_else(|| std::env::var_os("PUSHI_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let default = PathBuf::from(DEFAULT_CONFIG);
                default.is_file().then_some(default)
            })
    }
}

/// `pushi`'s commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Manage the apps of the MongoDB registry ([mongodb] in the config file).
    Apps {
        /// Print JSON (an app is an object with id, key, secret, name, enabled, ...).
        #[arg(long, global = true)]
        json: bool,
        /// The action.
        #[command(subcommand)]
        action: apps::Action,
    },
}
