//! The set of lifecycle events a plugin subscribes to, as sent in `ConfigureResponse`.

use std::fmt;

use rce_guard_proto::Event;

/// Every event up to VALIDATE_CONTAINER_ADJUSTMENT, in wire order.
const ALL_EVENTS: [Event; 14] = [
    Event::RUN_POD_SANDBOX,
    Event::STOP_POD_SANDBOX,
    Event::REMOVE_POD_SANDBOX,
    Event::CREATE_CONTAINER,
    Event::POST_CREATE_CONTAINER,
    Event::START_CONTAINER,
    Event::POST_START_CONTAINER,
    Event::UPDATE_CONTAINER,
    Event::POST_UPDATE_CONTAINER,
    Event::STOP_CONTAINER,
    Event::REMOVE_CONTAINER,
    Event::UPDATE_POD_SANDBOX,
    Event::POST_UPDATE_POD_SANDBOX,
    Event::VALIDATE_CONTAINER_ADJUSTMENT,
];

/// A set of NRI events. On the wire, event `e` is bit `1 << (e - 1)`.
///
/// Note that the wire value 0 means "every event" to the runtime, so an empty mask must
/// never be sent as such (the stub takes care of that).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EventMask(u32);

impl EventMask {
    /// No events.
    pub const EMPTY: EventMask = EventMask(0);
    /// Events 1..=11, all that NRI runtimes before 0.10 know.
    pub const UP_TO_REMOVE_CONTAINER: EventMask = EventMask((1 << 11) - 1);
    /// Events 1..=14, all that NRI runtimes from 0.10 on know.
    pub const ALL: EventMask = EventMask((1 << 14) - 1);

    /// The wire bit of `event`; 0 for UNKNOWN and LAST, which cannot be subscribed.
    pub const fn bit(event: Event) -> u32 {
        let value = event as i32;
        if value >= 1 && value <= 14 {
            1 << (value - 1)
        } else {
            0
        }
    }

    /// A mask holding `events`.
    pub const fn of(events: &[Event]) -> EventMask {
        let mut bits = 0;
        let mut i = 0;
        while i < events.len() {
            bits |= Self::bit(events[i]);
            i += 1;
        }
        EventMask(bits)
    }

    /// A mask from wire bits; bits that name no event are dropped.
    pub const fn from_bits_truncate(bits: u32) -> EventMask {
        EventMask(bits & Self::ALL.0)
    }

    /// The wire bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// This mask plus `event`.
    pub const fn with(self, event: Event) -> EventMask {
        EventMask(self.0 | Self::bit(event))
    }

    /// Whether `event` is in the mask.
    pub const fn contains(self, event: Event) -> bool {
        let bit = Self::bit(event);
        bit != 0 && self.0 & bit == bit
    }

    /// The events in both masks.
    pub const fn intersection(self, other: EventMask) -> EventMask {
        EventMask(self.0 & other.0)
    }

    /// The events in this mask but not in `other`.
    pub const fn difference(self, other: EventMask) -> EventMask {
        EventMask(self.0 & !other.0)
    }

    /// Whether no event is in the mask.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The events in the mask, in wire order.
    pub fn iter(self) -> impl Iterator<Item = Event> {
        ALL_EVENTS.into_iter().filter(move |e| self.contains(*e))
    }
}

impl FromIterator<Event> for EventMask {
    fn from_iter<I: IntoIterator<Item = Event>>(events: I) -> Self {
        events.into_iter().fold(EventMask::EMPTY, EventMask::with)
    }
}

impl fmt::Display for EventMask {
    /// `0x208 (CREATE_CONTAINER|REMOVE_CONTAINER)`, or `0x0 (none)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x} (", self.0)?;
        if self.is_empty() {
            f.write_str("none")?;
        }
        for (i, event) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            write!(f, "{event:?}")?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for EventMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventMask({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_for_event_e_is_one_shifted_by_e_minus_one() {
        assert_eq!(EventMask::bit(Event::RUN_POD_SANDBOX), 0x1);
        assert_eq!(EventMask::bit(Event::CREATE_CONTAINER), 0x8);
        assert_eq!(EventMask::bit(Event::REMOVE_CONTAINER), 0x400);
        assert_eq!(EventMask::bit(Event::VALIDATE_CONTAINER_ADJUSTMENT), 0x2000);
        assert_eq!(EventMask::bit(Event::UNKNOWN), 0);
        assert_eq!(EventMask::bit(Event::LAST), 0);
    }

    #[test]
    fn masks_combine_and_list_their_events() {
        let mask = EventMask::of(&[Event::REMOVE_CONTAINER, Event::CREATE_CONTAINER]);
        assert_eq!(mask.bits(), 0x408);
        assert!(mask.contains(Event::CREATE_CONTAINER));
        assert!(!mask.contains(Event::STOP_CONTAINER));
        assert!(!mask.contains(Event::UNKNOWN));
        assert_eq!(
            mask.iter().collect::<Vec<_>>(),
            vec![Event::CREATE_CONTAINER, Event::REMOVE_CONTAINER]
        );
        assert_eq!(
            mask.to_string(),
            "0x408 (CREATE_CONTAINER|REMOVE_CONTAINER)"
        );
        assert_eq!(EventMask::EMPTY.to_string(), "0x0 (none)");
        assert_eq!(EventMask::from_bits_truncate(u32::MAX), EventMask::ALL);
        assert_eq!(EventMask::ALL.iter().count(), 14);
        assert_eq!(
            EventMask::UP_TO_REMOVE_CONTAINER.iter().last(),
            Some(Event::REMOVE_CONTAINER)
        );
    }
}
