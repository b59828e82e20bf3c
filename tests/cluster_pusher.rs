//! A cluster of in-process nodes on one real Redis behaves as one Pusher app: delivery
//! across nodes (once each, `socket_id` excluded), client events, presence, counts, channel
//! lists, limits, cache channels, watchlists and terminate_connections. Fails (never skips)
//! when redis-server is missing.

mod support;

use serde_json::json;
use support::redis::RedisServer;
use support::{unique, TestServer};

/// `n` nodes of one cluster on `redis`, each with the fixture's apps.
async fn nodes(redis: &RedisServer, n: usize, extra: &str) -> Vec<TestServer> {
    let overrides = format!(
        "[cluster]\nredis_url = \"{}\"\nnode_timeout = 3\ncommand_timeout = 1\n{extra}",
        redis.url()
    );
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(TestServer::start_with(&overrides).await);
    }
    out
}

#[tokio::test]
async fn a_publish_on_one_node_reaches_subscribers_on_every_node_once() {
    let redis = RedisServer::start();
    let cluster = nodes(&redis, 3, "").await;
    let channel = unique("news-");
    let mut subs = Vec::new();
    for node in &cluster {
        subs.push(node.subscriber(&channel).await);
    }
    for (i, node) in cluster.iter().enumerate() {
        let name = format!("from-{i}");
        node.api().publish(&channel, &name, "{}").await;
        for sub in subs.iter_mut() {
            let got = sub.recv_json().await;
            assert_eq!(got["event"], json!(name), "{got}");
        }
    }
    for sub in subs.iter_mut() {
        sub.expect_nothing(200).await;
    }
}
