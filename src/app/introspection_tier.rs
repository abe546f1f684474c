//! Adapts the Redis tier's token space ([`Space::Tokens`]: sealed bytes, tags, notices) to the
//! introspection cache's seam ([`IntrospectionTier`]), and routes notices received from other
//! replicas to this replica's [`IntrospectionCache`]. Lives here, at the top, because `oauth2`
//! and `session` are one layer and may not use each other.
//!
//! Tags: `sub` (the answer's subject) and `cli` (its client id); keys are the cache's keyed
//! hashes of the token, never the token.

use std::sync::Arc;
use std::time::Duration;

use crate::oauth2::{
    AnswerInvalidation, IntrospectionCache, IntrospectionTier, SharedRead, StoredAnswer,
    shared::TierFuture,
};
use crate::session::cache::key::{hex, unhex};
use crate::session::redis::{RedisTier, Space};
use crate::session::tier::Notice;

/// Tag of an answer's subject.
const SUBJECT: &str = "sub";
/// Tag of an answer's client id.
const CLIENT: &str = "cli";

/// Introspection answers in Redis.
#[derive(Debug)]
pub(super) struct RedisIntrospectionTier(pub(super) Arc<RedisTier>);

impl IntrospectionTier for RedisIntrospectionTier {
    fn get<'a>(&'a self, key: &'a [u8; 32]) -> TierFuture<'a, SharedRead> {
        Box::pin(async move {
            match self
                .0
                .get_in(Space::Tokens, key, StoredAnswer::from_bytes)
                .await
            {
                Ok(Some(answer)) => SharedRead::Found(answer),
                Ok(None) => SharedRead::Miss,
                Err(rejected) => SharedRead::Rejected(rejected.as_str()),
            }
        })
    }

    fn put(self: Arc<Self>, key: [u8; 32], answer: StoredAnswer, ttl: Duration) {
        let mut tags = Vec::new();
        if let Some(s) = answer.subject() {
            tags.push((SUBJECT, s.to_owned()));
        }
        if let Some(c) = answer.client_id() {
            tags.push((CLIENT, c.to_owned()));
        }
        self.0
            .put_in(Space::Tokens, key, answer.to_bytes(), ttl, tags);
    }

    fn broadcast<'a>(&'a self, inv: &'a AnswerInvalidation) -> TierFuture<'a, bool> {
        let notice = match inv {
            AnswerInvalidation::Token(key) => Notice::Key(hex(key)),
            AnswerInvalidation::Subject(s) => Notice::Tag(SUBJECT.into(), s.clone()),
            AnswerInvalidation::Client(c) => Notice::Tag(CLIENT.into(), c.clone()),
            AnswerInvalidation::All => Notice::All,
        };
        Box::pin(async move { self.0.notify(Space::Tokens, &notice).await })
    }

    fn healthy(&self) -> bool {
        self.0.subscribed()
    }
}

/// Applies a notice from another replica to this replica's introspection cache.
pub(super) fn apply(cache: &IntrospectionCache, notice: Notice) {
    let inv = match notice {
        Notice::Key(k) => match unhex(&k) {
            Some(key) => AnswerInvalidation::Token(key),
            None => return,
        },
        Notice::Tag(tag, id) if tag == SUBJECT => AnswerInvalidation::Subject(id),
        Notice::Tag(tag, id) if tag == CLIENT => AnswerInvalidation::Client(id),
        Notice::Tag(..) => return,
        Notice::All => AnswerInvalidation::All,
    };
    cache.apply_remote(inv);
}
