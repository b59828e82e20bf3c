//! The real Redis the cluster tests run against (tests/support/redis.rs): it starts on a free
//! port, answers, comes back empty after a restart, and a paused one answers nothing until it
//! is resumed. Fails (never skips) when redis-server is not installed.

mod support;

use support::redis::RedisServer;

#[test]
fn redis_starts_restarts_empty_and_can_hang() {
    let mut redis = RedisServer::start();
    assert_eq!(redis.command(&["PING"]), "+PONG");
    assert_eq!(redis.command(&["SET", "pushi:k", "v"]), "+OK");
    assert_eq!(redis.command(&["GET", "pushi:k"]), "v");
    assert!(redis.url().starts_with("redis://127.0.0.1:"));

    let port = redis.port;
    redis.restart();
    assert_eq!(redis.port, port, "same port after a restart");
    assert_eq!(
        redis.command(&["GET", "pushi:k"]),
        "$-1",
        "nothing persisted across the restart"
    );

    redis.pause();
    let hung = redis.try_command(&["PING"]);
    assert!(hung.is_err(), "a paused Redis answered: {hung:?}");
    redis.resume();
    assert_eq!(redis.command(&["PING"]), "+PONG");

    redis.stop();
    assert!(redis.try_command(&["PING"]).is_err(), "stopped means gone");
}
