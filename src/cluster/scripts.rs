//! The Lua scripts that change the cluster's state in Redis. Each runs atomically, so a
//! transition (first/last socket of a channel, of a presence user, of a signed-in user) is
//! decided exactly once in the whole cluster, and the notice it causes is published from
//! inside the script: every node hears notices in the order the transitions happened.
//!
//! Keys (`P` = `cluster.prefix`, `A` = app id, `C` = channel, `N` = node id, `S` = socket):
//! - `P:nodes` — sorted set, node → deadline (Redis clock, ms); a node past it is dead.
//! - `P:node:N` — set of what the node holds: `c␀A␀C␀S`, `a␀A␀S`, `u␀A␀U␀S`; a dead
//!   node's entries are undone from it, once, by whichever node reaps it.
//! - `P:A:conns` — hash node → connections (for `max_connections`).
//! - `P:A:ch:C` — hash socket → presence user id (`""` elsewhere); its length is the
//!   subscription count. `P:A:chans` — set of occupied channels.
//! - `P:A:pm:C` / `P:A:pi:C` — presence user → sockets / `user_info` JSON; `P:A:pp:C` —
//!   the members that asked to be paired (peer channels).
//! - `P:A:pv` — presence channel → version of its last member notice (see
//!   `member_notice`); `P:A:cf` — channels whose subscribers are sent counts; `P:A:cs` — channel → when the
//!   count was last sent (the 30 s throttle above 100 subscribers).
//! - `P:A:users` — signed-in user → sockets.
//!
//! Pub/sub: `P:m:A:C` carries a channel's frames (`kind␀origin␀except␀id␀frame`, see
//! `envelope`); `P:a:A` carries an app's notices (`kind␀origin␀user`).
//!
//! Scripts compute their keys from the prefix: fine on one Redis (or a replicated one), not
//! on Redis Cluster, whose slots need every key declared.

/// Helpers every script starts with. `ARGV[1]` is always the prefix.
const PRELUDE: &str = r#"
local P = ARGV[1]
local Z = '\0'
local function key(A, kind, C)
  if C then return P .. ':' .. A .. ':' .. kind .. ':' .. C end
  return P .. ':' .. A .. ':' .. kind
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function split(s)
  local out, i = {}, 1
  while true do
    local j = string.find(s, Z, i, true)
    if not j then out[#out + 1] = string.sub(s, i); return out end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end
local function notice(A, C, except, frame)
  redis.call('PUBLISH', P .. ':m:' .. A .. ':' .. C, 'f' .. Z .. Z .. except .. Z .. Z .. frame)
end
-- A presence channel's member notices carry increasing versions (in the envelope's id
-- field, so sockets get them as stored frames): a joining socket drops those at or below
-- the version its JOIN saw, which its member list already reflects. A channel's first
-- version is the Redis time in µs, so versions also increase across a Redis restart.
local function member_notice(A, C, except, frame)
  local pv = key(A, 'pv')
  local v = redis.call('HINCRBY', pv, C, 1)
  if v == 1 then
    v = now_ms() * 1000
    redis.call('HSET', pv, C, string.format('%.0f', v))
  end
  redis.call('PUBLISH', P .. ':m:' .. A .. ':' .. C,
    'f' .. Z .. Z .. except .. Z .. string.format('%.0f', v) .. Z .. frame)
end
local function member_version(A, C)
  return redis.call('HGET', key(A, 'pv'), C) or '0'
end
-- pusher_internal:subscription_count, at most every 30 s above 100 subscribers.
local function count_notice(A, C, n)
  if n == 0 or redis.call('HEXISTS', key(A, 'cf'), C) == 0 then return end
  local now = now_ms()
  if n > 100 then
    local last = tonumber(redis.call('HGET', key(A, 'cs'), C) or '0')
    if now - last < 30000 then return end
  end
  redis.call('HSET', key(A, 'cs'), C, now)
  notice(A, C, '', cjson.encode({event = 'pusher_internal:subscription_count', channel = C,
    data = cjson.encode({subscription_count = n})}))
end
-- Scripts that add to a node's entries refuse while the node is not registered (declared
-- dead, or Redis lost it): what they added could never be reaped. The node re-registers
-- and re-asserts instead.
local function registered(N)
  return redis.call('ZSCORE', P .. ':nodes', N)
end
local NOREG = 'NOREG this node is not registered (declared dead, or Redis lost its state)'
-- The other peer members of a peer member U (empty when U is not one).
local function peers_of(A, C, U)
  local pp = key(A, 'pp', C)
  if U == '' or redis.call('SISMEMBER', pp, U) == 0 then return {} end
  local out = {}
  for _, v in ipairs(redis.call('SMEMBERS', pp)) do
    if v ~= U then out[#out + 1] = v end
  end
  return out
end
-- Removes socket S from channel C: {vacated, member_removed (0/1), count, user, peers},
-- or nil. `peers` are the pairs the socket leaves (its user's, when it was a peer member).
local function leave(N, A, C, S)
  local ch = key(A, 'ch', C)
  local U = redis.call('HGET', ch, S)
  if not U then return nil end
  redis.call('HDEL', ch, S)
  redis.call('SREM', P .. ':node:' .. N, 'c' .. Z .. A .. Z .. C .. Z .. S)
  local removed = 0
  local peers = peers_of(A, C, U)
  if U ~= '' then
    local pm = key(A, 'pm', C)
    if redis.call('HINCRBY', pm, U, -1) <= 0 then
      redis.call('HDEL', pm, U)
      redis.call('HDEL', key(A, 'pi', C), U)
      redis.call('SREM', key(A, 'pp', C), U)
      removed = 1
      member_notice(A, C, '', cjson.encode({event = 'pusher_internal:member_removed', channel = C,
        data = cjson.encode({user_id = U})}))
    end
  end
  local n = redis.call('HLEN', ch)
  local vacated = 0
  if n == 0 then
    vacated = 1
    redis.call('SREM', key(A, 'chans'), C)
    redis.call('HDEL', key(A, 'cs'), C)
    redis.call('HDEL', key(A, 'cf'), C)
    redis.call('HDEL', key(A, 'pv'), C)
  else
    count_notice(A, C, n)
  end
  return {vacated, removed, n, U, peers}
end
local function disconnect(N, A, S)
  if redis.call('SREM', P .. ':node:' .. N, 'a' .. Z .. A .. Z .. S) == 1 then
    if redis.call('HINCRBY', key(A, 'conns'), N, -1) <= 0 then
      redis.call('HDEL', key(A, 'conns'), N)
    end
  end
end
-- 1 when it was the user's last socket (watchers were told).
local function sign_out(N, A, U, S)
  if redis.call('SREM', P .. ':node:' .. N, 'u' .. Z .. A .. Z .. U .. Z .. S) == 0 then
    return 0
  end
  if redis.call('HINCRBY', key(A, 'users'), U, -1) <= 0 then
    redis.call('HDEL', key(A, 'users'), U)
    redis.call('PUBLISH', P .. ':a:' .. A, 'off' .. Z .. Z .. U)
    return 1
  end
  return 0
end
-- Undoes everything node N holds; appends {A, C, left} to `out` per channel left.
local function reap(N, out)
  for _, e in ipairs(redis.call('SMEMBERS', P .. ':node:' .. N)) do
    local f = split(e)
    if f[1] == 'c' then
      local r = leave(N, f[2], f[3], f[4])
      if r then out[#out + 1] = {f[2], f[3], r} end
    elseif f[1] == 'a' then
      disconnect(N, f[2], f[3])
    elseif f[1] == 'u' then
      sign_out(N, f[2], f[3], f[4])
    end
  end
  redis.call('DEL', P .. ':node:' .. N)
  return out
end
"#;

/// `ARGV`: P, N, A, S, max. 1 admitted, 0 over quota.
const CONNECT: &str = r#"
local N, A, S, max = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if not registered(N) then return redis.error_reply(NOREG) end
local e = 'a' .. Z .. A .. Z .. S
if redis.call('SISMEMBER', P .. ':node:' .. N, e) == 1 then return 1 end
if max > 0 then
  local total = 0
  for _, v in ipairs(redis.call('HVALS', key(A, 'conns'))) do total = total + tonumber(v) end
  if total >= max then return 0 end
end
redis.call('HINCRBY', key(A, 'conns'), N, 1)
redis.call('SADD', P .. ':node:' .. N, e)
return 1
"#;

/// `ARGV`: P, N, A, S.
const DISCONNECT: &str = r#"
disconnect(ARGV[2], ARGV[3], ARGV[4])
return 1
"#;

/// `ARGV`: P, N, A, C, S, user ('' unless presence), user_info, max members, counted,
/// peer. Returns {occupied, member_added, count, members (user, info, ...), peers, version}
/// or {-1} when full; `peers` are the other peer members when the user is one (its pairs);
/// `version` that of the channel's last member notice, which `members` reflects.
/// Idempotent: a socket already there changes nothing (a node re-asserting its state).
const JOIN: &str = r#"
local N, A, C, S, U, info = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local max, counted, peer = tonumber(ARGV[8]), ARGV[9], ARGV[10]
if not registered(N) then return redis.error_reply(NOREG) end
local ch = key(A, 'ch', C)
local function members()
  if U == '' then return {} end
  return redis.call('HGETALL', key(A, 'pi', C))
end
if redis.call('HEXISTS', ch, S) == 1 then
  return {0, 0, redis.call('HLEN', ch), members(), peers_of(A, C, U), member_version(A, C)}
end
local added = 0
if U ~= '' then
  local pm = key(A, 'pm', C)
  if redis.call('HEXISTS', pm, U) == 0 then
    if max > 0 and redis.call('HLEN', pm) >= max then return {-1} end
    redis.call('HSET', key(A, 'pi', C), U, info)
    if peer == '1' then redis.call('SADD', key(A, 'pp', C), U) end
    added = 1
  end
  redis.call('HINCRBY', pm, U, 1)
end
redis.call('HSET', ch, S, U)
redis.call('SADD', P .. ':node:' .. N, 'c' .. Z .. A .. Z .. C .. Z .. S)
local n = redis.call('HLEN', ch)
local occupied = 0
if n == 1 then
  occupied = 1
  redis.call('SADD', key(A, 'chans'), C)
end
if added == 1 then
  local data = '{"user_id":' .. cjson.encode(U) .. ',"user_info":' .. info .. '}'
  member_notice(A, C, S, cjson.encode({event = 'pusher_internal:member_added', channel = C, data = data}))
end
if counted == '1' then
  redis.call('HSET', key(A, 'cf'), C, '1')
  count_notice(A, C, n)
end
return {occupied, added, n, members(), peers_of(A, C, U), member_version(A, C)}
"#;

/// `ARGV`: P, N, A, C, S. Returns {vacated, member_removed, count, user, peers} or nil.
const LEAVE: &str = r#"
return leave(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"#;

/// `ARGV`: P, N, A, U, S, watchlist... Returns 0/1 per watched user (online).
const SIGN_IN: &str = r#"
local N, A, U, S = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not registered(N) then return redis.error_reply(NOREG) end
if redis.call('SADD', P .. ':node:' .. N, 'u' .. Z .. A .. Z .. U .. Z .. S) == 1 then
  if redis.call('HINCRBY', key(A, 'users'), U, 1) == 1 then
    redis.call('PUBLISH', P .. ':a:' .. A, 'on' .. Z .. Z .. U)
  end
end
local online = {}
for i = 6, #ARGV do online[#online + 1] = redis.call('HEXISTS', key(A, 'users'), ARGV[i]) end
return online
"#;

/// `ARGV`: P, N, A, U, S.
const SIGN_OUT: &str = r#"
return sign_out(ARGV[2], ARGV[3], ARGV[4], ARGV[5])
"#;

/// `ARGV`: P, N, timeout ms. Extends this node's deadline and reaps every node past its
/// own. Returns {known, {{A, C, left}, ...}}: known is 0 when this node was not registered
/// (Redis lost its state, or the node was declared dead), so it must re-assert everything.
const HEARTBEAT: &str = r#"
local N, timeout = ARGV[2], tonumber(ARGV[3])
local nodes = P .. ':nodes'
local now = now_ms()
local known = 0
if redis.call('ZSCORE', nodes, N) then known = 1 end
redis.call('ZADD', nodes, now + timeout, N)
local reaped = {}
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', nodes, '-inf', now)) do
  redis.call('ZREM', nodes, dead)
  reap(dead, reaped)
end
return {known, reaped}
"#;

/// `ARGV`: P, N. A node leaving for good (graceful shutdown): undoes what it still holds
/// and unregisters. Returns {{A, C, left}, ...}, as the heartbeat does.
const GOODBYE: &str = r#"
redis.call('ZREM', P .. ':nodes', ARGV[2])
return reap(ARGV[2], {})
"#;

/// `ARGV`: P, A, C, a, b. 1 when users a and b are both peer members of C.
const IS_PAIR: &str = r#"
local pp = key(ARGV[2], 'pp', ARGV[3])
if redis.call('SISMEMBER', pp, ARGV[4]) == 1 and redis.call('SISMEMBER', pp, ARGV[5]) == 1 then
  return 1
end
return 0
"#;

/// `ARGV`: P, nonce. 1 once every other live node acknowledged an offline-subscription
/// notice.
const ACKED: &str = r#"
local live = redis.call('ZCOUNT', P .. ':nodes', now_ms(), '+inf')
local acks = tonumber(redis.call('GET', P .. ':ack:' .. ARGV[2]) or '0')
if acks >= live - 1 then return 1 end
return 0
"#;

/// `ARGV`: P, A, users... The users whose personal channel has a subscriber somewhere.
const LIVE_PERSONAL: &str = r#"
local chans = key(ARGV[2], 'chans')
local out = {}
for i = 3, #ARGV do
  if redis.call('SISMEMBER', chans, 'private-personal-' .. ARGV[i]) == 1 then
    out[#out + 1] = ARGV[i]
  end
end
return out
"#;

/// `ARGV`: P, A. Every occupied channel: {C, subscriptions, users, ...}.
const CHANNELS: &str = r#"
local A = ARGV[2]
local out = {}
for _, C in ipairs(redis.call('SMEMBERS', key(A, 'chans'))) do
  out[#out + 1] = C
  out[#out + 1] = redis.call('HLEN', key(A, 'ch', C))
  out[#out + 1] = redis.call('HLEN', key(A, 'pm', C))
end
return out
"#;

/// The scripts, each with the prelude.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) connect: redis::Script,
    pub(crate) disconnect: redis::Script,
    pub(crate) join: redis::Script,
    pub(crate) leave: redis::Script,
    pub(crate) sign_in: redis::Script,
    pub(crate) sign_out: redis::Script,
    pub(crate) heartbeat: redis::Script,
    pub(crate) goodbye: redis::Script,
    pub(crate) channels: redis::Script,
    pub(crate) is_pair: redis::Script,
    pub(crate) live_personal: redis::Script,
    pub(crate) acked: redis::Script,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        let script = |body: &str| redis::Script::new(&format!("{PRELUDE}\n{body}"));
        Scripts {
            connect: script(CONNECT),
            disconnect: script(DISCONNECT),
            join: script(JOIN),
            leave: script(LEAVE),
            sign_in: script(SIGN_IN),
            sign_out: script(SIGN_OUT),
            heartbeat: script(HEARTBEAT),
            goodbye: script(GOODBYE),
            channels: script(CHANNELS),
            is_pair: script(IS_PAIR),
            live_personal: script(LIVE_PERSONAL),
            acked: script(ACKED),
        }
    }
}
