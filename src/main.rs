//! The `pushi` binary: arguments, logging, config, then the server until ctrl-c or SIGTERM,
//! or one `pushi apps` action against the MongoDB registry.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use pushi::apps::mongo::{Connection, Registry};
use pushi::apps::{sync, AppStore};
use pushi::cli::{Args, Command};
use pushi::config::LogFormat;
use pushi::storage::embedded::Embedded;
use pushi::storage::mongo::MongoStore;
use pushi::Config;

// Every API request and connection allocates and frees many small buffers, across worker
// threads; mimalloc's thread-local free lists do that with a fraction of glibc malloc's
// cost (14% of the server's CPU at publish capacity in `perf`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = args.config_path();
    let source = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults (no config file)".into());
    let runtime = tokio::runtime::Runtime::new().context("could not start the runtime")?;
    match args.command {
        None | Some(Command::Serve) => {
            // The config first: it says how log lines look (an error in it is printed by
            // main's caller, no logger needed).
            let config =
                pushi::config::load(path.as_deref()).context("could not load the configuration")?;
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
            let logs = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr);
            match config.log.format {
                LogFormat::Text => logs.init(),
                LogFormat::Json => logs.json().init(),
            }
            runtime.block_on(serve(config, path.as_deref(), &source))
        }
        Some(Command::Apps { json, action }) => {
            // The CLI prints its own messages; only warnings from libraries are logged.
            tracing_subscriber::fmt()
                .with_env_filter(EnvFilter::new("warn"))
                .with_writer(std::io::stderr)
                .init();
            let config = match pushi::config::load(path.as_deref()) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("pushi apps: could not load the configuration: {err}");
                    std::process::exit(pushi::cli::exit::FAILED);
                }
            };
            let code = runtime.block_on(pushi::cli::apps::run(&config, &source, action, json));
            std::process::exit(code);
        }
    }
}

async fn serve(config: Config, path: Option<&Path>, source: &str) -> anyhow::Result<()> {
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
    // A URI the driver refuses stops startup before anything listens. One client serves
    // the registry and the stored events.
    let connection = match &config.mongodb {
        Some(mongo) => Some((
            Connection::open(mongo).await.context("invalid [mongodb]")?,
            mongo.clone(),
        )),
        None => None,
    };
    let registry = connection
        .as_ref()
        .map(|(c, mongo)| (Registry::on(c), mongo.clone()));
    // A write past the file-size limit (ulimit -f) must fail with EFBIG like a full disk,
    // not kill the process: the store reports it and live traffic goes on.
    let _xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25))
        .context("could not handle SIGXFSZ")?;
    let storage = match &connection {
        Some((connection, _)) => {
            tracing::info!(uri = %connection.uri, "stored events and offline subscriptions in MongoDB");
            Some(MongoStore::open(connection).0)
        }
        // A cluster keeps stored events in MongoDB or nowhere (the server says so once).
        None if config.cluster.is_some() => None,
        None => {
            let storage = Embedded::open(
                Path::new(&config.storage.data_dir),
                config.storage.max_events_per_channel,
            )
            .context("could not open the store")?;
            tracing::info!(
                data_dir = %config.storage.data_dir,
                "stored events and offline subscriptions in the embedded store"
            );
            Some(storage)
        }
    };
    let started = tokio::time::Instant::now();
    let store = Arc::new(match registry {
        Some(_) => AppStore::awaiting_registry(&config.apps),
        None => AppStore::new(&config.apps),
    });
    let running = config.clone();
    let mut builder = pushi::Server::builder(config).apps(store.clone());
    if let Some(storage) = storage {
        builder = builder.storage(storage);
    }
    let server = builder.bind().await?;
    let ctx = server.context().clone();
    tokio::spawn(pushi::reload::on_sighup(
        ctx.clone(),
        path.map(Path::to_path_buf),
        running,
    ));
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

    // With a registry, the first load runs while the server already answers (`/ready` is
    // 503 until it is done); if it cannot be done, the server stops and pushi exits non-zero.
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    if let Some((registry, mongo)) = registry {
        let mongo_startup_timeout = mongo.startup_timeout;
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let uri = registry.uri().to_string();
        let apply_ctx = ctx.clone();
        let on_change: sync::OnChange =
            Arc::new(move |changes| pushi::reload::apply(&apply_ctx, changes));
        tokio::spawn(sync::run(
            registry,
            store,
            mongo,
            on_change,
            ctx.shutdown.clone(),
            first_tx,
        ));
        tracing::info!(uri = %uri, "loading apps from MongoDB");
        let publisher = ctx.publisher.clone();
        let deadline = started + std::time::Duration::from_secs(mongo_startup_timeout);
        tokio::spawn(async move {
            match first_rx.await {
                Ok(Ok(count)) => {
                    tracing::info!(uri = %uri, apps = count, "apps loaded from MongoDB")
                }
                Ok(Err(why)) => {
                    let _ = failed_tx.send(why);
                    return;
                }
                Err(_) => return,
            }
            // The offline subscriptions come from the same database, within the same time.
            while !publisher.is_loaded() {
                if tokio::time::Instant::now() >= deadline {
                    let why = publisher
                        .storage()
                        .status
                        .degraded()
                        .map(|(why, _)| why)
                        .unwrap_or_else(|| "no answer".into());
                    let _ = failed_tx.send(format!(
                        "could not read the offline subscriptions from MongoDB at {uri} \
                         within mongodb.startup_timeout: {why}"
                    ));
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            tracing::info!(uri = %uri, "ready");
        });
    }
    let mut failure = None;
    server
        .run(async {
            tokio::select! {
                _ = pushi::server::shutdown_signal() => {}
                Ok(why) = failed_rx => {
                    tracing::error!("{why}");
                    failure = Some(why);
                }
            }
        })
        .await;
    match failure {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}
