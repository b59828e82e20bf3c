//! Live app changes: applying an [`AppChanges`] to the running server, and the SIGHUP reload
//! of the config file's `[[apps]]`.
//!
//! Owns: what a change means for live sockets (a disabled app's are closed with 4003, a
//! deleted app's with 4001; other changes apply at the sessions' next check) and the reload
//! log. Must not touch: how apps are stored or looked up.
//!
//! Only `[[apps]]` is reloaded: listeners, limits and timeouts are fixed for the life of the
//! process, so a reload that changes them says so and leaves them as they are.

use std::path::Path;

use crate::apps::AppChanges;
use crate::config::{self, Config};
use crate::context::Context;
use crate::protocol::Close;

/// Closes the sockets of disabled and deleted apps and logs the change.
pub fn apply(ctx: &Context, changes: &AppChanges) {
    for id in &changes.disabled {
        let closed = ctx.registry.close_app(id, Close::APP_DISABLED);
        tracing::info!(app = %id, closed, "app disabled: its connections are closed with 4003");
    }
    for id in &changes.removed {
        let closed = ctx.registry.close_app(id, Close::APP_NOT_FOUND);
        tracing::info!(app = %id, closed, "app removed: its connections are closed with 4001");
    }
    if !changes.is_empty() {
        tracing::info!(
            added = ?changes.added,
            updated = ?changes.updated,
            disabled = ?changes.disabled,
            removed = ?changes.removed,
            "apps changed"
        );
    }
}

/// Re-reads the config file (and the environment) and applies its `[[apps]]`. A file with
/// an error is refused as a whole, naming the key, and the running apps stay. Sections other
/// than `[[apps]]` that differ from `running` are named in the log and not applied.
pub fn reload(
    ctx: &Context,
    path: Option<&Path>,
    running: &Config,
) -> Result<AppChanges, config::Error> {
    let next = config::load(path)?;
    let sections = [
        ("server", section(&running.server) != section(&next.server)),
        ("limits", section(&running.limits) != section(&next.limits)),
        (
            "metrics",
            section(&running.metrics) != section(&next.metrics),
        ),
        ("log", section(&running.log) != section(&next.log)),
        (
            "mongodb",
            section(&running.mongodb) != section(&next.mongodb),
        ),
        (
            "storage",
            section(&running.storage) != section(&next.storage),
        ),
        (
            "cluster",
            section(&running.cluster) != section(&next.cluster),
        ),
    ];
    let stale: Vec<&str> = sections
        .iter()
        .filter(|(_, d)| *d)
        .map(|(n, _)| *n)
        .collect();
    if !stale.is_empty() {
        tracing::warn!(
            sections = %stale.join(", "),
            "config reload: these sections changed and need a restart; only [[apps]] was applied"
        );
    }
    let changes = ctx.apps.set_file(&next.apps).map_err(|conflicts| {
        config::Error::Invalid(conflicts.into_iter().map(|c| c.message).collect())
    })?;
    apply(ctx, &changes);
    Ok(changes)
}

fn section<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_default()
}

/// Reloads on every SIGHUP until the process ends (Unix only).
pub async fn on_sighup(ctx: Context, path: Option<std::path::PathBuf>, running: Config) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("SIGHUP cannot be watched: app reload is off");
            return;
        };
        loop {
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading [[apps]]");
            if let Err(err) = reload(&ctx, path.as_deref(), &running) {
                tracing::error!("config reload refused, the running apps stay: {err}");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (ctx, path, running);
    }
}
