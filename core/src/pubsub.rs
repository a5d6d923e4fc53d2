//! Topic fan-out: the peer messaging namespaces use.
//!
//! A node announces the topics it subscribes to (a namespace is a topic) to every connected
//! peer, and again to each peer that connects later, and to a peer that announces its first
//! topic (so a lost announcement is repaired as soon as that peer has a use for it). A published message goes to every
//! connected peer subscribed to its topic; receivers deliver it locally if they subscribe, and
//! forward it to their other subscribed peers, so a message crosses a partial mesh. Every
//! message has an id (SHA-256 of topic and payload); an id seen before is dropped, which ends
//! the flood and suppresses duplicates and replays the network makes.
//!
//! ```text
//!   subscribe(t) ──Subscription{t}──▶ every peer          peer_topics[p] ∋ t
//!   publish(t, m) ──Publish{t, m}──▶ peers with t ──▶ new id? deliver + forward : drop
//! ```
//!
//! Bounds: topics per node and per peer announcement, payload size, and the seen-id cache
//! (oldest ids are forgotten first; a forgotten id seen again is delivered again, which every
//! namespace message tolerates: they are idempotent).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use borsh::{BorshDeserialize, BorshSerialize};

use crate::crypto::Hash32;
use crate::node::PeerId;
use crate::wire::{BoundedBytes, BoundedVec, MessageKind, WireMessage};

/// Most topics one node subscribes to (and announces in one message).
pub const MAX_TOPICS: usize = 256;
/// Largest published payload.
pub const MAX_PUBLISH_BYTES: usize = 512 << 10;

/// A topic (a namespace's id).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct Topic(pub Hash32);

/// A published message's id: SHA-256 of its topic and payload.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct MessageId(pub Hash32);

impl MessageId {
    /// The id of `payload` on `topic`.
    pub fn of(topic: &Topic, payload: &[u8]) -> MessageId {
        MessageId(Hash32::of(&[b"portcullis.pubsub.v1", &topic.0.0, payload]))
    }
}

/// A peer's full set of subscribed topics (replaces what was known before).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Subscriptions {
    /// The topics.
    pub topics: BoundedVec<Topic, MAX_TOPICS>,
}

/// A message published to a topic.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Publish {
    /// The topic.
    pub topic: Topic,
    /// The message (a framed namespace message).
    pub payload: BoundedBytes<MAX_PUBLISH_BYTES>,
}

impl WireMessage for Subscriptions {
    const KIND: MessageKind = MessageKind::Subscriptions;
}

impl WireMessage for Publish {
    const KIND: MessageKind = MessageKind::Publish;
}

/// Why a topic operation was refused. The caller is at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PubSubError {
    /// Already subscribed to `MAX_TOPICS` topics.
    #[error("subscribed to {MAX_TOPICS} topics already")]
    TooManyTopics,
    /// The payload is larger than `MAX_PUBLISH_BYTES`.
    #[error("payload of {0} bytes exceeds {MAX_PUBLISH_BYTES}")]
    PayloadTooLarge(usize),
}

/// What the pub/sub layer asks the node to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PubSubAction {
    /// Send our subscriptions to a peer.
    Announce(PeerId, Subscriptions),
    /// Send a publish to a peer.
    Forward(PeerId, Publish),
    /// A new message on a topic we subscribe to: hand it to the application.
    Deliver {
        /// Who sent it to us (not necessarily its author).
        from: Option<PeerId>,
        /// The topic.
        topic: Topic,
        /// The payload.
        payload: Vec<u8>,
    },
}

/// One node's subscriptions, its peers' subscriptions, and the seen-id cache.
#[derive(Debug)]
pub struct PubSub {
    mine: BTreeSet<Topic>,
    peers: BTreeMap<PeerId, BTreeSet<Topic>>,
    seen: BTreeSet<MessageId>,
    seen_order: VecDeque<MessageId>,
    max_seen: usize,
}

impl PubSub {
    /// An empty layer remembering at most `max_seen` message ids.
    pub fn new(max_seen: usize) -> PubSub {
        PubSub {
            mine: BTreeSet::new(),
            peers: BTreeMap::new(),
            seen: BTreeSet::new(),
            seen_order: VecDeque::new(),
            max_seen: max_seen.max(1),
        }
    }

    fn announcement(&self) -> Subscriptions {
        let topics: Vec<Topic> = self.mine.iter().copied().collect();
        Subscriptions {
            // `mine` never exceeds MAX_TOPICS (checked in `subscribe`).
            topics: BoundedVec::try_from_vec(topics).unwrap_or_default(),
        }
    }

    /// Subscribes to `topic`, announcing it to every connected peer.
    pub fn subscribe(
        &mut self,
        topic: Topic,
        connected: &[PeerId],
        out: &mut Vec<PubSubAction>,
    ) -> Result<(), PubSubError> {
        if self.mine.contains(&topic) {
            return Ok(());
        }
        if self.mine.len() >= MAX_TOPICS {
            return Err(PubSubError::TooManyTopics);
        }
        self.mine.insert(topic);
        let ann = self.announcement();
        out.extend(
            connected
                .iter()
                .map(|p| PubSubAction::Announce(*p, ann.clone())),
        );
        Ok(())
    }

    /// Unsubscribes from `topic`, announcing the change.
    pub fn unsubscribe(
        &mut self,
        topic: &Topic,
        connected: &[PeerId],
        out: &mut Vec<PubSubAction>,
    ) {
        if self.mine.remove(topic) {
            let ann = self.announcement();
            out.extend(
                connected
                    .iter()
                    .map(|p| PubSubAction::Announce(*p, ann.clone())),
            );
        }
    }

    /// Whether we subscribe to `topic`.
    pub fn is_subscribed(&self, topic: &Topic) -> bool {
        self.mine.contains(topic)
    }

    /// A new connection: tell it what we subscribe to.
    pub fn on_connected(&mut self, peer: PeerId, out: &mut Vec<PubSubAction>) {
        if !self.mine.is_empty() {
            out.push(PubSubAction::Announce(peer, self.announcement()));
        }
    }

    /// A connection closed: forget its subscriptions.
    pub fn on_disconnected(&mut self, peer: PeerId) {
        self.peers.remove(&peer);
    }

    /// A peer announced its subscriptions. A peer that subscribes to its first topic is told
    /// ours again: it may publish now, and our announcement at connect time may have been lost.
    pub fn on_subscriptions(
        &mut self,
        peer: PeerId,
        subs: &Subscriptions,
        out: &mut Vec<PubSubAction>,
    ) {
        let was_idle = !self.is_active_peer(peer);
        self.peers
            .insert(peer, subs.topics.iter().copied().collect());
        if was_idle && self.is_active_peer(peer) && !self.mine.is_empty() {
            out.push(PubSubAction::Announce(peer, self.announcement()));
        }
    }

    /// Whether `peer` announced at least one topic.
    pub fn is_active_peer(&self, peer: PeerId) -> bool {
        self.peers.get(&peer).is_some_and(|t| !t.is_empty())
    }

    /// Connected peers subscribed to `topic`, in order.
    pub fn subscribers(&self, topic: &Topic) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(p, _)| *p)
            .collect()
    }

    /// Remembers `id`; returns false if it was seen before.
    fn first_sight(&mut self, id: MessageId) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.seen_order.push_back(id);
        while self.seen_order.len() > self.max_seen {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// Publishes `payload` on `topic` to every subscribed peer. Returns the message id.
    pub fn publish(
        &mut self,
        topic: Topic,
        payload: Vec<u8>,
        out: &mut Vec<PubSubAction>,
    ) -> Result<MessageId, PubSubError> {
        let len = payload.len();
        let payload =
            BoundedBytes::try_from_vec(payload).map_err(|_| PubSubError::PayloadTooLarge(len))?;
        let id = MessageId::of(&topic, &payload);
        self.first_sight(id);
        let msg = Publish { topic, payload };
        out.extend(
            self.subscribers(&topic)
                .into_iter()
                .map(|p| PubSubAction::Forward(p, msg.clone())),
        );
        Ok(id)
    }

    /// A publish from `from`: drop it if seen, else deliver (if subscribed) and forward to the
    /// other subscribed peers.
    pub fn on_publish(&mut self, from: PeerId, msg: Publish, out: &mut Vec<PubSubAction>) {
        let id = MessageId::of(&msg.topic, &msg.payload);
        if !self.first_sight(id) {
            return;
        }
        for p in self.subscribers(&msg.topic) {
            if p != from {
                out.push(PubSubAction::Forward(p, msg.clone()));
            }
        }
        if self.mine.contains(&msg.topic) {
            out.push(PubSubAction::Deliver {
                from: Some(from),
                topic: msg.topic,
                payload: msg.payload.into_inner(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(n: u8) -> Topic {
        Topic(Hash32([n; 32]))
    }

    #[test]
    fn publish_reaches_subscribers_once_and_floods_stop() {
        let (a, b, c) = (PeerId(1), PeerId(2), PeerId(3));
        let mut node = PubSub::new(16);
        let mut out = Vec::new();
        node.subscribe(topic(1), &[a, b], &mut out).unwrap();
        assert_eq!(out.len(), 2, "announced to both peers");
        node.on_subscriptions(a, &node.announcement(), &mut Vec::new());
        node.on_subscriptions(c, &node.announcement(), &mut Vec::new());
        out.clear();
        let payload = vec![7u8; 10];
        let msg = Publish {
            topic: topic(1),
            payload: BoundedBytes::try_from_vec(payload.clone()).unwrap(),
        };
        node.on_publish(a, msg.clone(), &mut out);
        assert_eq!(
            out,
            vec![
                PubSubAction::Forward(c, msg.clone()),
                PubSubAction::Deliver {
                    from: Some(a),
                    topic: topic(1),
                    payload
                }
            ]
        );
        out.clear();
        node.on_publish(c, msg, &mut out);
        assert!(out.is_empty(), "a duplicate is dropped");
    }

    #[test]
    fn unsubscribed_topics_are_forwarded_not_delivered_and_cache_is_bounded() {
        let mut node = PubSub::new(2);
        let (a, b) = (PeerId(1), PeerId(2));
        let mut sub = PubSub::new(2);
        let mut out = Vec::new();
        sub.subscribe(topic(2), &[], &mut out).unwrap();
        node.on_subscriptions(b, &sub.announcement(), &mut Vec::new());
        for n in 0..3u8 {
            out.clear();
            let msg = Publish {
                topic: topic(2),
                payload: BoundedBytes::try_from_vec(vec![n]).unwrap(),
            };
            node.on_publish(a, msg, &mut out);
            assert!(matches!(out.as_slice(), [PubSubAction::Forward(p, _)] if *p == b));
        }
        assert_eq!(node.seen.len(), 2);
        assert!(
            node.publish(topic(2), vec![0; MAX_PUBLISH_BYTES + 1], &mut out)
                .is_err()
        );
    }

    #[test]
    fn a_peer_announcing_its_first_topic_is_told_ours_once() {
        let p = PeerId(1);
        let mut node = PubSub::new(16);
        let mut out = Vec::new();
        node.subscribe(topic(1), &[], &mut out).unwrap();
        let mut peer = PubSub::new(16);
        let mut ignored = Vec::new();
        // An idle peer (no topics): nothing to say back.
        node.on_subscriptions(p, &peer.announcement(), &mut out);
        assert!(out.is_empty());
        assert!(!node.is_active_peer(p));
        // Its first topic: our announcement goes back, once.
        peer.subscribe(topic(2), &[], &mut ignored).unwrap();
        node.on_subscriptions(p, &peer.announcement(), &mut out);
        assert_eq!(out, vec![PubSubAction::Announce(p, node.announcement())]);
        assert!(node.is_active_peer(p));
        out.clear();
        peer.subscribe(topic(3), &[], &mut ignored).unwrap();
        node.on_subscriptions(p, &peer.announcement(), &mut out);
        assert!(out.is_empty(), "already active: no ping-pong");
    }
}
