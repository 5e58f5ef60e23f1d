//! The order's life as one table: every trigger, the statuses it is accepted in, the status it
//! moves the order to, the event the move emits, and when an order can be settled.
//!
//! ```text
//!            Submit          StoredOut           Result | Timeout           ResultOut
//!   (none) ─────────▶ accepted ───────▶ dispatched ──────────────▶ result_stored ───────▶ notified
//!                        │                                             ▲
//!                        └──────────────── Result ─────────────────────┘
//!
//!              LateResult                      LateOut
//!   notified ────────────▶ late_result_stored ─────────▶ late_notified
//! ```
//!
//! The order actor asks [`check`] before it makes a move, and the writer's conditional updates
//! are built from the same rows ([`Transition::from`] becomes the update's `version IN (…)`), so
//! a move that lost a race (a peer instance, a repeated release mark) changes nothing. The `…Out`
//! triggers only record that the event announcing the previous move is in the stream; the order
//! actor decided everything else.
//!
//! A late result is accepted once the order's result is the hub's timeout (`result_stored` or
//! `notified`), but the order moves to `late_result_stored` only from `notified`: a late result
//! stored while the timeout's result event is still on its way waits, and [`Trigger::ResultOut`]
//! moves it on ([`Transition::then`]), so `notified` always comes first.

use crate::protocol::{EventKind, OrderStatus};

/// What moves an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A user's submit: the order is stored.
    Submit,
    /// The stored event is in the stream: the partner's `result_timeout` starts.
    StoredOut,
    /// The partner's result.
    Result,
    /// The partner missed its `result_timeout`: the hub stores the result `timeout`.
    Timeout,
    /// The result event is in the stream.
    ResultOut,
    /// A partner's result for an order the hub closed as `timeout`.
    LateResult,
    /// The late event is in the stream.
    LateOut,
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub trigger: Trigger,
    /// The statuses the order moves from; empty for a new order.
    pub from: &'static [OrderStatus],
    pub to: OrderStatus,
    /// The event committed with the move, announcing `to`.
    pub emits: Option<EventKind>,
    /// A move that follows in the same commit when the order has what it needs (a waiting late
    /// result after [`Trigger::ResultOut`]).
    pub then: Option<Trigger>,
}

use OrderStatus::*;

/// Every legal move.
pub const TABLE: &[Transition] = &[
    Transition {
        trigger: Trigger::Submit,
        from: &[],
        to: Accepted,
        emits: Some(EventKind::Stored),
        then: None,
    },
    Transition {
        trigger: Trigger::StoredOut,
        from: &[Accepted],
        to: Dispatched,
        emits: None,
        then: None,
    },
    // A result may overtake the release of the stored event: the partner pulled the order from
    // the read node before the hub recorded the release. The order still ends at version 3.
    Transition {
        trigger: Trigger::Result,
        from: &[Accepted, Dispatched],
        to: ResultStored,
        emits: Some(EventKind::ResultStored),
        then: None,
    },
    Transition {
        trigger: Trigger::Timeout,
        from: &[Dispatched],
        to: ResultStored,
        emits: Some(EventKind::ResultStored),
        then: None,
    },
    Transition {
        trigger: Trigger::ResultOut,
        from: &[ResultStored],
        to: Notified,
        emits: None,
        then: Some(Trigger::LateResult),
    },
    Transition {
        trigger: Trigger::LateResult,
        from: &[Notified],
        to: LateResultStored,
        emits: Some(EventKind::Late),
        then: None,
    },
    Transition {
        trigger: Trigger::LateOut,
        from: &[LateResultStored],
        to: LateNotified,
        emits: None,
        then: None,
    },
];

/// A move the table does not have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{trigger:?} is not a move from {from:?}")]
pub struct Illegal {
    pub trigger: Trigger,
    pub from: Option<OrderStatus>,
}

/// The row of `trigger`.
pub fn transition(trigger: Trigger) -> &'static Transition {
    TABLE
        .iter()
        .find(|t| t.trigger == trigger)
        .expect("every trigger has a row")
}

/// Where `trigger` takes an order at `from` (`None`: no order yet).
pub fn check(trigger: Trigger, from: Option<OrderStatus>) -> Result<OrderStatus, Illegal> {
    let t = transition(trigger);
    let legal = match from {
        None => t.from.is_empty(),
        Some(from) => t.from.contains(&from),
    };
    if legal {
        Ok(t.to)
    } else {
        Err(Illegal { trigger, from })
    }
}

/// The versions `trigger` moves from: the writer's `version IN (…)` condition.
pub fn from_versions(trigger: Trigger) -> Vec<i32> {
    transition(trigger)
        .from
        .iter()
        .map(|s| s.version())
        .collect()
}

/// Whether an order whose result is the hub's timeout takes a late result in this status: it is
/// stored at once, and the order moves when [`Trigger::LateResult`] allows.
pub fn takes_late_result(status: OrderStatus) -> bool {
    matches!(status, ResultStored | Notified)
}

/// The settled rule: an order can be settled once its result event is in the stream
/// (`notified` or later), once, when every auxiliary system has a record of it. The settled
/// event is no move: it records `settled_at` and carries the order's version as it was checked.
pub fn settleable(status: OrderStatus) -> bool {
    status.version() >= Notified.version()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [OrderStatus; 6] = OrderStatus::ALL;
    const TRIGGERS: [Trigger; 7] = [
        Trigger::Submit,
        Trigger::StoredOut,
        Trigger::Result,
        Trigger::Timeout,
        Trigger::ResultOut,
        Trigger::LateResult,
        Trigger::LateOut,
    ];

    /// Every (trigger, from) pair and what it gives, written out by hand.
    fn expected(trigger: Trigger, from: Option<OrderStatus>) -> Option<OrderStatus> {
        use Trigger as T;
        match (trigger, from) {
            (T::Submit, None) => Some(Accepted),
            (T::StoredOut, Some(Accepted)) => Some(Dispatched),
            (T::Result, Some(Accepted | Dispatched)) => Some(ResultStored),
            (T::Timeout, Some(Dispatched)) => Some(ResultStored),
            (T::ResultOut, Some(ResultStored)) => Some(Notified),
            (T::LateResult, Some(Notified)) => Some(LateResultStored),
            (T::LateOut, Some(LateResultStored)) => Some(LateNotified),
            _ => None,
        }
    }

    #[test]
    fn every_move_and_every_illegal_move() {
        let froms = std::iter::once(None).chain(ALL.into_iter().map(Some));
        let mut legal = 0;
        for from in froms {
            for trigger in TRIGGERS {
                let got = check(trigger, from).ok();
                assert_eq!(got, expected(trigger, from), "{trigger:?} from {from:?}");
                if let Err(e) = check(trigger, from) {
                    assert_eq!(e, Illegal { trigger, from });
                } else {
                    legal += 1;
                }
            }
        }
        assert_eq!(legal, 8, "the table has eight legal moves");
    }

    #[test]
    fn every_trigger_has_exactly_one_row() {
        for trigger in TRIGGERS {
            assert_eq!(
                TABLE.iter().filter(|t| t.trigger == trigger).count(),
                1,
                "{trigger:?}"
            );
        }
        assert_eq!(TABLE.len(), TRIGGERS.len());
    }

    #[test]
    fn versions_only_grow() {
        for t in TABLE {
            for from in t.from {
                assert!(from.version() < t.to.version(), "{t:?}");
            }
        }
    }

    #[test]
    fn a_move_that_emits_announces_its_target() {
        let emits: Vec<(Trigger, EventKind)> = TABLE
            .iter()
            .filter_map(|t| t.emits.map(|e| (t.trigger, e)))
            .collect();
        assert_eq!(
            emits,
            [
                (Trigger::Submit, EventKind::Stored),
                (Trigger::Result, EventKind::ResultStored),
                (Trigger::Timeout, EventKind::ResultStored),
                (Trigger::LateResult, EventKind::Late),
            ]
        );
        // Release marks record an event that is out: they emit nothing.
        for trigger in [Trigger::StoredOut, Trigger::ResultOut, Trigger::LateOut] {
            assert_eq!(transition(trigger).emits, None);
        }
    }

    #[test]
    fn the_conditional_updates_are_the_table() {
        assert_eq!(from_versions(Trigger::Result), [1, 2]);
        assert_eq!(from_versions(Trigger::StoredOut), [1]);
        assert_eq!(from_versions(Trigger::LateOut), [5]);
        assert!(from_versions(Trigger::Submit).is_empty());
    }

    #[test]
    fn a_late_result_waits_for_the_timeout_event_then_follows_it() {
        assert!(takes_late_result(ResultStored) && takes_late_result(Notified));
        assert!(!takes_late_result(Dispatched) && !takes_late_result(LateResultStored));
        assert!(check(Trigger::LateResult, Some(ResultStored)).is_err());
        let out = transition(Trigger::ResultOut);
        assert_eq!(out.then, Some(Trigger::LateResult));
        assert_eq!(
            check(Trigger::LateResult, Some(out.to)),
            Ok(LateResultStored)
        );
    }

    #[test]
    fn settled_once_the_result_event_is_out() {
        let settleable: Vec<_> = ALL.into_iter().filter(|s| settleable(*s)).collect();
        assert_eq!(settleable, [Notified, LateResultStored, LateNotified]);
    }
}
