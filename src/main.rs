//! The `pushi` binary: arguments, logging, config, then the server until ctrl-c or SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;

/// The config used when neither `--config` nor `PUSHI_CONFIG` is given.
const DEFAULT_CONFIG: &str = "config.toml";

fn config_path() -> anyhow::Result<Option<PathBuf>> {
    let mut args = std::env::args().skip(1);
    let mut path = std::env::var_os("PUSHI_CONFIG").map(PathBuf::from);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                let value = args.next().context("--config needs a file name")?;
                path = Some(PathBuf::from(value));
            }
            "--help" | "-h" => {
                println!("usage: pushi [--config FILE]\n\nFILE defaults to $PUSHI_CONFIG, then ./config.toml.\nEnvironment variables PUSHI_<SECTION>__<KEY> override the file.");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (usage: pushi [--config FILE])"),
        }
    }
    if path.is_none() && std::path::Path::new(DEFAULT_CONFIG).is_file() {
        path = Some(PathBuf::from(DEFAULT_CONFIG));
    }
    Ok(path)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let path = config_path()?;
    let config =
        pushi::config::load(path.as_deref()).context("could not load the configuration")?;
    let source = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    let apps: Vec<String> = config
        .apps
        .iter()
        .map(|a| format!("id={} key={}", a.id, a.key))
        .collect();
    // Every connection is a file descriptor: use all the hard limit allows (as Go and most
    // servers do), and say when the pending-connection bound cannot protect it.
    let fds = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    let pending = config.server.max_pending_connections as u64;
    if fds > 0 && pending >= fds / 2 {
        tracing::warn!(
            fds,
            max_pending_connections = pending,
            "server.max_pending_connections is not well below the file-descriptor limit \
             (ulimit -n): idle connects could still exhaust descriptors"
        );
    }
    let running = config.clone();
    let server = pushi::Server::bind(config).await?;
    let ctx = server.context().clone();
    tokio::spawn(pushi::reload::on_sighup(ctx, path.clone(), running));
    let metrics = server
        .metrics_addr()
        .map(|a| format!("http://{a}/metrics"))
        .unwrap_or_else(|| "off".into());
    tracing::info!(
        config = %source,
        addr = %server.local_addr(),
        apps = %apps.join(", "),
        metrics = %metrics,
        fds,
        "pushi listening: WebSocket at ws://{}/app/{{key}}, HTTP API at http://{}/apps/{{app_id}}/",
        server.local_addr(),
        server.local_addr()
    );
    server.run(pushi::server::shutdown_signal()).await;
    Ok(())
}
