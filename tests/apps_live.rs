//! An app store injected through `Server::builder`: changes made to it reach live sockets
//! (the seam other app sources feed).

mod support;

use std::sync::Arc;

use pushi::apps::AppStore;
use support::{config_text, Client, TIMEOUT};

#[tokio::test]
async fn an_injected_store_drives_live_sockets() {
    let config = pushi::config::from_toml(&config_text("")).unwrap();
    let only = "[[apps]]\nid = \"40\"\nkey = \"live-key\"\nsecret = \"live-secret\"\n";
    let apps = pushi::config::from_toml(only).unwrap().apps;
    let store = Arc::new(AppStore::new(&apps));
    let server = pushi::Server::builder(config)
        .apps(store.clone())
        .bind()
        .await
        .unwrap();
    let addr = server.local_addr();
    let ctx = server.context().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    // The injected store is the one served: its app connects, the config file's do not.
    let connect = |key: &str| {
        let url = format!("ws://{addr}/app/{key}?protocol=7");
        async move {
            let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
                .await
                .unwrap()
                .unwrap();
            Client {
                ws,
                socket_id: String::new(),
                key: String::new(),
                secret: String::new(),
            }
        }
    };
    let mut live = connect("live-key").await;
    live.established().await;
    connect("app-key").await.expect_fatal(4001).await;

    // Disabling the app in the store and applying the change closes its socket with 4003.
    let disabled = format!("{only}enabled = false\n");
    let changes = store
        .set_file(&pushi::config::from_toml(&disabled).unwrap().apps)
        .unwrap();
    assert_eq!(changes.disabled, vec!["40"]);
    pushi::reload::apply(&ctx, &changes);
    live.expect_fatal(4003).await;

    let _ = stop.send(());
    running.await.unwrap();
}
