//! The Lua scripts that change the shared session table. Each runs atomically inside Redis, so
//! no two nodes can interleave a read and a write of the same binding, and each publishes its
//! change event in the same step, so the order of events is the order of the changes.
//!
//! Keys follow `<prefix>owners` (full JID → "node conn seq"), `<prefix>node:<name>:sessions`
//! (full JID → session record), `<prefix>nodes` (node → lease expiry in Redis time, ms) and
//! `<prefix>node:<name>:inbox` (the node's bus stream). Scripts that touch another node's keys
//! build their names from the prefix, which is why a single Redis primary (optionally with
//! replicas and Sentinel) is supported and Redis Cluster is not.

use std::sync::LazyLock;

use redis::Script;

/// Redis's own clock, so the nodes' clocks never have to agree.
const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// KEYS: owners, my sessions, events channel.
/// ARGV: full JID, "node conn seq", record, event, prefix, mode.
/// Mode "bind": a binding with a higher seq wins over this one. Mode "register" (putting back
/// a node's sessions after an outage): any binding on another node wins.
/// Returns {accepted (0/1), number of subscribers that got the event}.
pub static BIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cur = redis.call('HGET', KEYS[1], ARGV[1])
local me = string.match(ARGV[2], '^(%S+) ')
local seq = tonumber(string.match(ARGV[2], '(%d+)$'))
if cur then
  local cnode, cseq = string.match(cur, '^(%S+) %d+ (%d+)$')
  if ARGV[6] == 'register' and cnode ~= me then return {0, 0} end
  if cseq and tonumber(cseq) > seq then return {0, 0} end
  if cnode and cnode ~= me then
    redis.call('HDEL', ARGV[5] .. 'node:' .. cnode .. ':sessions', ARGV[1])
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return {1, redis.call('PUBLISH', KEYS[3], ARGV[4])}",
    )
});

/// KEYS: owners, my sessions, events channel. ARGV: full JID, "node conn ", event.
/// Removes the binding only if this connection still owns it. Returns 1 if it did.
pub static UNBIND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, #ARGV[2]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('PUBLISH', KEYS[3], ARGV[3])
  return 1
end
return 0",
    )
});

/// KEYS: owners, my sessions, events channel. ARGV: full JID, "node conn ", record, event.
/// Changes the record only if this connection still owns the binding.
pub static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, #ARGV[2]) == ARGV[2] then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('PUBLISH', KEYS[3], ARGV[4])
  return 1
end
return 0",
    )
});

/// KEYS: nodes. ARGV: node, lease in ms.
/// Renews this node's lease. Returns {whether the lease still existed, the expired nodes}.
pub static REFRESH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}local existed = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
return {{existed and 1 or 0, dead}}"
    ))
});

/// KEYS: nodes, events channel. ARGV: node, prefix, force ("1" or "0"), event.
/// Removes a node whose lease expired (or, forced, a node that is leaving or restarting):
/// its lease, its bindings and its bus stream, in one step, so that from then on nothing can
/// be handed to it. Returns nil if the node is alive (another node won the race, or it came
/// back), else {its session records as jid, record, …; the frames left in its stream}.
pub static REAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "if ARGV[3] ~= '1' then
  {NOW}  local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if not score or tonumber(score) >= now then return false end
end
redis.call('ZREM', KEYS[1], ARGV[1])
local owners = ARGV[2] .. 'owners'
local skey = ARGV[2] .. 'node:' .. ARGV[1] .. ':sessions'
local sessions = redis.call('HGETALL', skey)
local mine = ARGV[1] .. ' '
for i = 1, #sessions, 2 do
  local cur = redis.call('HGET', owners, sessions[i])
  if cur and string.sub(cur, 1, #mine) == mine then redis.call('HDEL', owners, sessions[i]) end
end
redis.call('DEL', skey)
local ikey = ARGV[2] .. 'node:' .. ARGV[1] .. ':inbox'
local frames = {{}}
for _, entry in ipairs(redis.call('XRANGE', ikey, '-', '+')) do
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'f' then table.insert(frames, fields[j + 1]) end
  end
end
redis.call('DEL', ikey)
redis.call('PUBLISH', KEYS[2], ARGV[4])
return {{sessions, frames}}"
    ))
});

/// KEYS: nodes, the destination's inbox. ARGV: destination node, frames….
/// Appends frames to a node's bus stream only while that node holds a lease: a frame is either
/// in the stream before the node is reaped (and the reaper re-routes it) or refused (and the
/// sender does), never written into a stream no one will read. Returns 1 if appended.
pub static HAND_OVER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
for i = 2, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', 1000000, '*', 'f', ARGV[i])
end
return 1",
    )
});

/// KEYS: the room's host key, nodes. ARGV: this node, lease in ms.
/// Returns the node hosting the room: the current host while it holds a node lease (its room
/// lease renewed if that is this node), else this node, which takes the room over.
pub static CLAIM_ROOM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cur = redis.call('GET', KEYS[1])
if cur and (cur == ARGV[1] or redis.call('ZSCORE', KEYS[2], cur)) then
  if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return cur
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]",
    )
});
