//! One counter per value of an enum: [`EnumCounters`].
//!
//! Outcome labels come from enums (close reasons, frame error kinds, error
//! classes, ...). Each such enum lists its values once, in an `ALL` const,
//! with `as_str()` as the label; the counters are sized and indexed by
//! that list, and `/metrics` walks it, so a new value is counted and
//! exported under its own label without another table to keep in step.
//!
//! It lives in the binary: the enums come from every crate (the codec's
//! [`FrameErrorKind`], the net crate's [`ErrorClass`] and [`LimitKind`],
//! the routes' own), and only the binary counts them. The trait is local,
//! so it can be implemented here for the other crates' enums.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use spillway_codec::FrameErrorKind;
use spillway_net::classify::ErrorClass;
use spillway_net::limit::LimitKind;

/// An enum whose values are counted: its list and its labels.
pub trait Label: Copy + 'static {
    /// Every value, each once, in the order of [`Label::index`].
    const ALL: &'static [Self];

    /// Position in [`Label::ALL`].
    fn index(self) -> usize;

    /// The metric label.
    fn as_str(self) -> &'static str;
}

/// One relaxed atomic counter per value of `E`.
pub struct EnumCounters<E: Label> {
    counts: Box<[AtomicU64]>,
    _enum: std::marker::PhantomData<E>,
}

impl<E: Label> EnumCounters<E> {
    pub fn new() -> Self {
        EnumCounters {
            counts: E::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            _enum: std::marker::PhantomData,
        }
    }

    /// Counts one `value`.
    pub fn add(&self, value: E) {
        self.counts[value.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// What was counted for `value` so far.
    pub fn get(&self, value: E) -> u64 {
        self.counts[value.index()].load(Ordering::Relaxed)
    }

    /// Every value with its count, in [`Label::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (E, u64)> + '_ {
        E::ALL.iter().map(|&e| (e, self.get(e)))
    }

    /// All values together.
    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }
}

impl<E: Label> Default for EnumCounters<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Label> fmt::Debug for EnumCounters<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(e, n)| (e.as_str(), n)))
            .finish()
    }
}

/// Implements [`Label`] from an enum's own `ALL`, `index()` and `as_str()`.
macro_rules! label {
    ($($ty:ty),+ $(,)?) => {$(
        impl $crate::counters::Label for $ty {
            const ALL: &'static [Self] = &<$ty>::ALL;
            fn index(self) -> usize {
                <$ty>::index(self)
            }
            fn as_str(self) -> &'static str {
                <$ty>::as_str(self)
            }
        }
    )+};
}
pub(crate) use label;

label!(FrameErrorKind, ErrorClass, LimitKind);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every enum counted somewhere: its `ALL` holds each value once, at
    /// its index, with a distinct label.
    fn check<E: Label + PartialEq + fmt::Debug>() {
        let mut labels = std::collections::HashSet::new();
        for (i, &e) in E::ALL.iter().enumerate() {
            assert_eq!(e.index(), i, "{e:?}");
            assert!(labels.insert(e.as_str()), "{e:?}: label taken");
        }
    }

    #[test]
    fn every_counted_enum_lists_its_values_at_their_index() {
        check::<FrameErrorKind>();
        check::<ErrorClass>();
        check::<LimitKind>();
        check::<crate::stream::CloseReason>();
        check::<crate::queue::ProducerEnd>();
        check::<crate::queue::ConsumerEnd>();
        check::<crate::state::ReloadResult>();
    }

    #[test]
    fn counts_by_value() {
        let c = EnumCounters::<ErrorClass>::new();
        c.add(ErrorClass::Transient);
        c.add(ErrorClass::Transient);
        c.add(ErrorClass::Resource);
        assert_eq!(c.get(ErrorClass::Transient), 2);
        assert_eq!(c.get(ErrorClass::Persistent), 0);
        assert_eq!(c.get(ErrorClass::Resource), 1);
        assert_eq!(c.total(), 3);
        let labels: Vec<_> = c.iter().map(|(e, n)| (e.as_str(), n)).collect();
        assert_eq!(
            labels,
            [("transient", 2), ("persistent", 0), ("resource", 1)]
        );
    }
}
