//! The reply cache: what makes a re-sent request run at most once.
//!
//! A client proxy numbers its requests `1, 2, 3, ...` under its [`ClientId`] and piggybacks on
//! every request its **acknowledged watermark**: the highest id below which it has every reply.
//! Servers keep, per client, the replies above that watermark. A request whose reply is kept is
//! answered from the cache; a request at or below the watermark was answered already and is
//! never executed again.
//!
//! The cache is part of the replicated state: it is changed only by applying logged requests
//! (so every replica holds the same cache at the same log position) and it is checkpointed with
//! the service's state, so a backup that takes over knows what was already executed.
//!
//! Retention is bounded without clocks, so that it stays a function of the log:
//! - per client, at most [`MAX_RETAINED_PER_CLIENT`] replies (a proxy keeps fewer requests in
//!   flight; beyond that the oldest are dropped and counted as acknowledged);
//! - a client not heard of for [`CLIENT_IDLE_ENTRIES`] log entries is forgotten.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;

/// The most replies kept per client. A [`GroupClient`](super::client::GroupClient) never has
/// more requests in flight than this.
pub const MAX_RETAINED_PER_CLIENT: usize = 1024;

/// A client not heard of for this many log entries is forgotten with its replies.
pub const CLIENT_IDLE_ENTRIES: u64 = 1 << 20;

/// The longest client id, in bytes.
const MAX_CLIENT_ID_LEN: usize = 64;

/// The identity of one client proxy: 1 to 64 of `[A-Za-z0-9_.-]`. Two proxies must never share
/// one while both run; [`ClientId::random`] makes a fresh one per proxy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

impl ClientId {
    /// Validates `id`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] naming the broken rule.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_CLIENT_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self(id))
        } else {
            Err(Error::InvalidRequest {
                reason: format!(
                    "client id {:?} must be 1 to 64 of ASCII letters, digits, `-`, `_` and `.`",
                    id.escape_debug().to_string()
                ),
            })
        }
    }

    /// `<prefix>-<16 random hex digits>`, unique in practice. `prefix` is cut to 40 bytes and
    /// characters outside the alphabet become `_`.
    #[allow(
        clippy::disallowed_methods,
        reason = "an id unique across client processes; no decision reads it"
    )]
    pub fn random(prefix: &str) -> Self {
        let clean: String = prefix
            .chars()
            .take(40)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let clean = if clean.is_empty() {
            "client".to_owned()
        } else {
            clean
        };
        Self(format!("{clean}-{:016x}", rand::random::<u64>()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Serialize for ClientId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

// Ids come from the network and from the log: validated as they are decoded.
impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::new(text).map_err(serde::de::Error::custom)
    }
}

/// What executing a request produced: the service's reply, or its refusal. Both are final:
/// a re-sent request gets the same outcome from the cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The service's reply bytes.
    Ok(Bytes),
    /// The service refused the request (its `execute` returned an error); the message says why.
    Failed(String),
}

/// What the cache knows of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not executed yet: execute it.
    Fresh,
    /// Executed; here is its outcome.
    Cached(Outcome),
    /// At or below the client's acknowledged watermark: the client has its reply already, and
    /// it is not executed again.
    Acknowledged,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ClientReplies {
    /// Every request id at or below this was answered and acknowledged.
    acked: u64,
    /// Outcomes of the requests above `acked`, by id.
    replies: BTreeMap<u64, Outcome>,
    /// The log position at which this client was last heard of.
    last_seen: u64,
}

/// Retained replies keyed by `(client id, request id)`. See the [module documentation](self).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyCache {
    clients: BTreeMap<ClientId, ClientReplies>,
}

impl ReplyCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// What is known of request `id` of `client`.
    pub fn lookup(&self, client: &ClientId, id: u64) -> Lookup {
        match self.clients.get(client) {
            None => Lookup::Fresh,
            Some(c) if id <= c.acked => Lookup::Acknowledged,
            Some(c) => c
                .replies
                .get(&id)
                .map_or(Lookup::Fresh, |o| Lookup::Cached(o.clone())),
        }
    }

    /// Raises `client`'s watermark to `acked` (never lowers it) and drops the replies at or
    /// below it; notes that the client was heard of at log position `at`.
    pub fn acknowledge(&mut self, client: &ClientId, acked: u64, at: u64) {
        let c = self.clients.entry(client.clone()).or_default();
        c.last_seen = c.last_seen.max(at);
        if acked > c.acked {
            c.acked = acked;
            c.replies = c.replies.split_off(&(acked + 1));
        }
    }

    /// Keeps the outcome of request `id` of `client`, and enforces the per-client bound.
    pub fn record(&mut self, client: &ClientId, id: u64, outcome: Outcome, at: u64) {
        let c = self.clients.entry(client.clone()).or_default();
        c.last_seen = c.last_seen.max(at);
        if id <= c.acked {
            return;
        }
        c.replies.insert(id, outcome);
        while c.replies.len() > MAX_RETAINED_PER_CLIENT {
            if let Some((oldest, _)) = c.replies.pop_first() {
                c.acked = c.acked.max(oldest);
            }
        }
    }

    /// Forgets the clients not heard of since log position `at - CLIENT_IDLE_ENTRIES`.
    pub fn expire(&mut self, at: u64) {
        if let Some(horizon) = at.checked_sub(CLIENT_IDLE_ENTRIES) {
            self.clients.retain(|_, c| c.last_seen > horizon);
        }
    }

    /// How many replies are retained, over all clients.
    pub fn len(&self) -> usize {
        self.clients.values().map(|c| c.replies.len()).sum()
    }

    /// Whether no reply is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many clients are known.
    pub fn clients(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(n: u8) -> Outcome {
        Outcome::Ok(Bytes::from(vec![n]))
    }

    #[test]
    fn a_request_runs_at_most_once() {
        let a = ClientId::new("a").unwrap();
        let mut cache = ReplyCache::new();
        assert_eq!(cache.lookup(&a, 1), Lookup::Fresh);
        cache.record(&a, 1, ok(1), 1);
        cache.record(&a, 2, ok(2), 2);
        assert_eq!(cache.lookup(&a, 1), Lookup::Cached(ok(1)));
        cache.acknowledge(&a, 1, 3);
        assert_eq!(cache.lookup(&a, 1), Lookup::Acknowledged);
        assert_eq!(cache.lookup(&a, 2), Lookup::Cached(ok(2)));
        assert_eq!(cache.lookup(&a, 3), Lookup::Fresh);
        // A watermark never goes down.
        cache.acknowledge(&a, 0, 4);
        assert_eq!(cache.lookup(&a, 1), Lookup::Acknowledged);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn retention_is_bounded() {
        let a = ClientId::new("a").unwrap();
        let b = ClientId::new("b").unwrap();
        let mut cache = ReplyCache::new();
        for id in 1..=(MAX_RETAINED_PER_CLIENT as u64 + 10) {
            cache.record(&a, id, ok(0), id);
        }
        assert_eq!(cache.len(), MAX_RETAINED_PER_CLIENT);
        assert_eq!(cache.lookup(&a, 10), Lookup::Acknowledged);
        cache.record(&b, 1, ok(0), 5);
        cache.expire(CLIENT_IDLE_ENTRIES + 6);
        assert_eq!(cache.clients(), 1, "b was idle, a was not");
    }

    #[test]
    fn client_ids_are_validated() {
        assert!(ClientId::new("").is_err());
        assert!(ClientId::new("a b").is_err());
        assert!(ClientId::new("x".repeat(65)).is_err());
        let r = ClientId::random("kv client/1");
        assert!(ClientId::new(r.as_str()).is_ok(), "{r}");
        assert!(r.as_str().starts_with("kv_client_1-"));
    }
}
