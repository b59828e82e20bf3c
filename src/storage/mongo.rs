//! The MongoDB store (used when `[mongodb]` is configured).
