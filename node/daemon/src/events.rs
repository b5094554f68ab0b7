//! The event bus: the queue actor and the network publish typed events
//! (`protocol::event`), and every `GET /v1/events` subscriber reads them.
//!
//! The bus keeps the last [`EVENTS_KEPT_MAX`] events as a replay window, so a client that
//! reconnects with `Last-Event-ID` misses nothing that is still there, and learns through a
//! gap event when something is gone. Publishing never waits: a subscriber that falls more
//! than [`SUBSCRIBER_LAG_MAX`] events behind is told so by a gap, and the publisher goes on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use meshwork_protocol::event::{Event, EventEnvelope};
use meshwork_protocol::time::format_rfc3339_ms;
use tokio::sync::broadcast;

use crate::clock::now_ms;

/// Events kept for clients that resume with `Last-Event-ID`.
pub(crate) const EVENTS_KEPT_MAX: usize = 4096;
/// Events a live subscriber may fall behind before it is told of a gap.
pub(crate) const SUBSCRIBER_LAG_MAX: usize = 1024;
/// Bits of an event id below the boot number: ids of a later boot are always larger.
const EVENT_ID_BOOT_SHIFT: u32 = 40;

/// A cloneable handle on the node's one event bus.
#[derive(Debug, Clone)]
pub(crate) struct EventBus {
    window: Arc<Mutex<Window>>,
    live: broadcast::Sender<Arc<EventEnvelope>>,
}

#[derive(Debug)]
struct Window {
    next_id: u64,
    kept: VecDeque<Arc<EventEnvelope>>,
}

/// What a new subscriber starts with: the events it missed that are still kept, a gap if
/// some are gone, and the live stream from there on.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub(crate) replay: Vec<Arc<EventEnvelope>>,
    pub(crate) live: broadcast::Receiver<Arc<EventEnvelope>>,
}

impl EventBus {
    /// A bus whose ids start above every id an earlier boot of this home gave.
    pub(crate) fn new(boot: u32) -> EventBus {
        let (live, _) = broadcast::channel(SUBSCRIBER_LAG_MAX);
        let next_id = (u64::from(boot) << EVENT_ID_BOOT_SHIFT) + 1;
        EventBus { window: Arc::new(Mutex::new(Window { next_id, kept: VecDeque::new() })), live }
    }

    /// Publishes events in order; never waits for a subscriber.
    pub(crate) fn publish(&self, events: impl IntoIterator<Item = Event>) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let at = format_rfc3339_ms(now_ms());
        for event in events {
            let envelope = Arc::new(EventEnvelope { id: window.next_id, at: at.clone(), event });
            window.next_id += 1;
            if window.kept.len() == EVENTS_KEPT_MAX {
                window.kept.pop_front();
            }
            window.kept.push_back(Arc::clone(&envelope));
            // No subscriber is not an error: the event is kept for those who come later.
            let _ = self.live.send(envelope);
        }
    }

    /// Subscribes after event `after` (none: from now on). Taken under the window's lock, so
    /// every event is either in the replay or on the live stream, never both, never neither.
    pub(crate) fn subscribe(&self, after: Option<u64>) -> Subscription {
        let window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let live = self.live.subscribe();
        let Some(after) = after else { return Subscription { replay: Vec::new(), live } };
        let mut replay: Vec<Arc<EventEnvelope>> =
            window.kept.iter().filter(|envelope| envelope.id > after).cloned().collect();
        let first_kept = window.kept.front().map_or(window.next_id, |envelope| envelope.id);
        if after.saturating_add(1) < first_kept && after < window.next_id {
            replay.insert(0, gap(after, first_kept));
        }
        Subscription { replay, live }
    }
}

/// The event that tells a client events after `after` and before `before` are gone. It
/// carries the id of the last event it stands for, so resuming after it goes on from there.
pub(crate) fn gap(after: u64, before: u64) -> Arc<EventEnvelope> {
    let id = before.saturating_sub(1).max(after);
    Arc::new(EventEnvelope { id, at: format_rfc3339_ms(now_ms()), event: Event::Gap { after, before } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(task: &str) -> Event {
        Event::TaskReady { task: task.to_owned() }
    }

    fn ids(envelopes: &[Arc<EventEnvelope>]) -> Vec<u64> {
        envelopes.iter().map(|envelope| envelope.id).collect()
    }

    #[test]
    fn a_resumed_subscription_replays_exactly_what_came_after_its_id() {
        // Goal: Last-Event-ID resumes without a missed or repeated event.
        let bus = EventBus::new(3);
        bus.publish([ready("A"), ready("B"), ready("C")]);
        let base = 3u64 << EVENT_ID_BOOT_SHIFT;
        let mut subscription = bus.subscribe(Some(base + 1));
        assert_eq!(ids(&subscription.replay), [base + 2, base + 3]);
        bus.publish([ready("D")]);
        assert_eq!(subscription.live.try_recv().map(|envelope| envelope.id).ok(), Some(base + 4));
        assert!(subscription.live.try_recv().is_err(), "nothing twice");
    }

    #[test]
    fn resuming_from_an_id_older_than_the_window_starts_with_a_gap() {
        // Goal: a client that fell out of the window is told, then gets what is kept.
        let bus = EventBus::new(1);
        bus.publish((0..EVENTS_KEPT_MAX + 5).map(|index| ready(&format!("T{index}"))));
        let base = 1u64 << EVENT_ID_BOOT_SHIFT;
        let subscription = bus.subscribe(Some(base));
        let first = &subscription.replay[0];
        assert_eq!(first.event, Event::Gap { after: base, before: base + 6 });
        assert_eq!(subscription.replay.len(), EVENTS_KEPT_MAX + 1);
        assert_eq!(subscription.replay[1].id, base + 6);
    }

    #[test]
    fn ids_of_a_later_boot_are_larger_and_an_old_id_is_a_gap() {
        // Goal: after a restart, a client resuming with the old boot's id learns of the gap.
        let before = EventBus::new(1);
        before.publish([ready("A")]);
        let old_id = before.subscribe(Some(0)).replay.last().map_or(0, |envelope| envelope.id);
        let after = EventBus::new(2);
        after.publish([ready("B")]);
        let subscription = after.subscribe(Some(old_id));
        assert!(matches!(subscription.replay[0].event, Event::Gap { .. }), "{:?}", subscription.replay);
        assert!(subscription.replay[1].id > old_id);
    }
}
