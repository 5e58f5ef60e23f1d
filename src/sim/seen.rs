//! What a participant received and how the hub answered it, kept when a test asks for it (the
//! fault tests check every consumer's deliveries by event id, and every result a partner was
//! told is stored). A run of the demo or the bench keeps counters only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// What one participant saw: every delivery, each event once (by event id), and the answers to
/// its requests.
#[derive(Debug, Default)]
pub struct Seen {
    pub deliveries: usize,
    /// Event id → (order id, event type, first delivery).
    pub events: HashMap<String, (String, String, Instant)>,
    /// The final answers to its requests, by status or error code (`get ok`, `get <code>` for a
    /// partner's reads).
    pub answers: BTreeMap<String, usize>,
    /// Order ids whose result was answered `late_result_stored`.
    pub late: HashSet<String>,
    /// Order ids whose result was answered `result_stored` (a partner's acknowledged write).
    pub stored: HashSet<String>,
    /// Order ids a partner's `get` was answered `not_found` for, after it had received the
    /// order's stored event.
    pub get_not_found: Vec<String>,
}

pub type SeenRef = Arc<Mutex<Seen>>;

/// Where a participant notes what it saw: nowhere, or a [`Seen`] a test holds.
#[derive(Clone, Debug, Default)]
pub struct Observer(Option<SeenRef>);

impl Observer {
    pub fn new(seen: SeenRef) -> Self {
        Self(Some(seen))
    }

    fn lock(&self) -> Option<MutexGuard<'_, Seen>> {
        self.0
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// A message was delivered: counted, and its event kept by id on its first delivery.
    pub fn delivered(&self, payload: &[u8]) {
        let Some(mut s) = self.lock() else { return };
        s.deliveries += 1;
        let ev: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        s.events.entry(text(&ev["id"])).or_insert_with(|| {
            (
                text(&ev["data"]["order_id"]),
                text(&ev["type"]),
                Instant::now(),
            )
        });
    }

    /// A request got its final answer: a status or an error code.
    pub fn answer(&self, key: &str) {
        if let Some(mut s) = self.lock() {
            *s.answers.entry(key.to_owned()).or_default() += 1;
        }
    }

    /// A partner's result was answered with `status`.
    pub fn result(&self, order_id: &str, status: &str) {
        let Some(mut s) = self.lock() else { return };
        match status {
            "late_result_stored" => s.late.insert(order_id.to_owned()),
            "result_stored" => s.stored.insert(order_id.to_owned()),
            _ => false,
        };
    }

    /// A partner's `get` of an order whose stored event it had received was `not_found`.
    pub fn get_not_found(&self, order_id: &str) {
        if let Some(mut s) = self.lock() {
            s.get_not_found.push(order_id.to_owned());
        }
    }
}
