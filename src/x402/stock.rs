//! Pre-signed authorizations for offers a wallet is paying again and again (the price-memory
//! hot path), so a repeat paid call takes a ready signature instead of waiting for the signing
//! pool: no thread hand-off on the request's path, and the pool signs in batches (one wake-up
//! for many signatures) while the worker goes on proxying.
//!
//! A shelf holds authorizations for one (domain, payTo, amount, maxTimeoutSeconds), each with
//! its own random nonce and the window it was signed with. Rules:
//! - an authorization is handed out once, and only within [`MAX_AGE_SECONDS`] of the second it
//!   was signed for; its `validBefore` is then at most that much earlier than a fresh one's,
//!   which is why offers with a short `maxTimeoutSeconds` are never stocked;
//! - a shelf is refilled only while it is in use (a second take within the age limit), once it
//!   is down to half its target: half a second of the calls seen in the last second, at least
//!   [`MIN_TARGET`] (up to [`MAX_PER_SHELF`]). A steady stream is served from stock, a lone
//!   call costs nothing extra, and the signing pool wakes once per refill, not per call (at 50
//!   calls/s: about four times a second), while what is stocked is used before it ages out;
//! - an unused authorization is never sent anywhere: it expires in memory, unsettled.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use alloy_primitives::{Address, U256};

use super::sign::{SignedPayment, TokenDomain};

/// Seconds after its signing second an authorization may still be handed out.
pub const MAX_AGE_SECONDS: u64 = 1;
/// Offers whose window is shorter than this are always signed fresh.
pub const MIN_TIMEOUT_SECONDS: u64 = 30;
/// A refill is signed and stocked in parts of this many authorizations.
pub const REFILL_PART: usize = 8;
/// Ready authorizations kept per shelf at most.
pub const MAX_PER_SHELF: usize = 256;
/// The smallest stock a shelf in use aims for.
pub const MIN_TARGET: usize = 4;
/// Shelves kept before idle ones are dropped.
const MAX_SHELVES: usize = 1024;

/// What makes authorizations interchangeable: everything signed except nonce and window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShelfKey {
    pub domain: TokenDomain,
    pub to: Address,
    pub value: U256,
    pub max_timeout_seconds: u64,
}

/// One stocked authorization and the second its window was computed from.
struct Ready {
    signed_for: u64,
    payment: SignedPayment,
}

impl Ready {
    /// The last second it may be handed out.
    fn usable_until(&self) -> u64 {
        self.signed_for + MAX_AGE_SECONDS
    }
}

#[derive(Default)]
struct Shelf {
    ready: VecDeque<Ready>,
    /// The second of the last take (0: never).
    last_take: u64,
    /// Takes in the second `last_take` and in the one before it.
    this_second: usize,
    previous_second: usize,
    refilling: bool,
}

impl Shelf {
    /// Counts a take at `now` (a clock that went back counts in the latest second).
    fn count(&mut self, now: u64) {
        if now > self.last_take {
            self.previous_second = if now == self.last_take + 1 {
                self.this_second
            } else {
                0
            };
            self.this_second = 0;
            self.last_take = now;
        }
        self.this_second += 1;
    }

    /// How many ready authorizations the shelf aims for: half a second of the calls seen.
    fn target(&self) -> usize {
        (self.this_second.max(self.previous_second) / 2).clamp(MIN_TARGET, MAX_PER_SHELF)
    }
}

/// Authorizations to sign (on the signing pool) and hand back with [`Stock::put`].
#[derive(Debug, PartialEq, Eq)]
pub struct Refill {
    pub key: ShelfKey,
    /// Authorizations to sign, all for the window starting at `now`.
    pub count: usize,
    pub now: u64,
}

/// The stock of one wallet.
#[derive(Default)]
pub struct Stock {
    shelves: Mutex<HashMap<ShelfKey, Shelf>>,
}

impl Stock {
    /// Takes a ready authorization for `key` usable at `now`, if any, and says whether the
    /// shelf needs refilling.
    pub fn take(&self, key: &ShelfKey, now: u64) -> (Option<SignedPayment>, Option<Refill>) {
        if key.max_timeout_seconds < MIN_TIMEOUT_SECONDS {
            return (None, None);
        }
        let mut shelves = self.shelves.lock().unwrap_or_else(|p| p.into_inner());
        if !shelves.contains_key(key) {
            if shelves.len() >= MAX_SHELVES {
                // Keep the shelves that can still serve; a new offer beyond that is signed
                // fresh.
                shelves
                    .retain(|_, s| s.refilling || s.ready.iter().any(|r| r.usable_until() >= now));
                if shelves.len() >= MAX_SHELVES {
                    return (None, None);
                }
            }
            shelves.insert(key.clone(), Shelf::default());
        }
        // The key is cloned only for a new shelf, not on every call.
        let Some(shelf) = shelves.get_mut(key) else {
            return (None, None);
        };
        // Too old: the window would no longer fit. A later second's (the caller read its
        // clock before a slow step) stays for the calls after it.
        shelf.ready.retain(|r| r.usable_until() >= now);
        let taken = shelf
            .ready
            .iter()
            .position(|r| r.signed_for <= now)
            .and_then(|i| shelf.ready.remove(i))
            .map(|r| r.payment);
        let in_use = taken.is_some() || now <= shelf.last_take + MAX_AGE_SECONDS;
        shelf.count(now);
        let mut refill = None;
        let target = shelf.target();
        if in_use && !shelf.refilling && shelf.ready.len() <= target / 2 {
            shelf.refilling = true;
            refill = Some(Refill {
                key: key.clone(),
                count: target - shelf.ready.len(),
                // For the latest second seen, so the next calls can use them.
                now: shelf.last_take,
            });
        }
        (taken, refill)
    }

    /// Stocks authorizations signed for `refill`; `done` (the last part, possibly empty if
    /// signing failed) allows the next refill of that shelf.
    pub fn put(&self, refill: &Refill, signed: Vec<SignedPayment>, done: bool) {
        let mut shelves = self.shelves.lock().unwrap_or_else(|p| p.into_inner());
        let Some(shelf) = shelves.get_mut(&refill.key) else {
            return;
        };
        shelf.refilling &= !done;
        let room = MAX_PER_SHELF.saturating_sub(shelf.ready.len());
        shelf
            .ready
            .extend(signed.into_iter().take(room).map(|payment| Ready {
                signed_for: refill.now,
                payment,
            }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x402::Authorization;
    use alloy_primitives::B256;

    fn key(max_timeout_seconds: u64) -> ShelfKey {
        ShelfKey {
            domain: TokenDomain {
                name: "USDC".into(),
                version: "2".into(),
                chain_id: 84532,
                verifying_contract: Address::with_last_byte(1),
            },
            to: Address::with_last_byte(2),
            value: U256::from(10_000),
            max_timeout_seconds,
        }
    }

    fn signed(refill: &Refill, first_nonce: u8) -> Vec<SignedPayment> {
        (0..refill.count)
            .map(|i| SignedPayment {
                authorization: Authorization {
                    from: Address::with_last_byte(3),
                    to: refill.key.to,
                    value: refill.key.value,
                    valid_after: refill.now - 600,
                    valid_before: refill.now + refill.key.max_timeout_seconds,
                    nonce: B256::with_last_byte(first_nonce + i as u8),
                },
                signature: [0; 65],
                presigned: true,
            })
            .collect()
    }

    #[test]
    fn a_lone_call_orders_nothing_and_a_stream_is_served_from_stock() {
        let stock = Stock::default();
        let k = key(60);
        let now = 1_800_000_000;
        // First call ever: nothing ready, nothing ordered (it may stay the only one).
        assert_eq!(stock.take(&k, now), (None, None));
        // A second call within the age limit: the shelf is in use; the refill is the smallest
        // target.
        let (none, refill) = stock.take(&k, now + 1);
        assert!(none.is_none());
        let refill = refill.expect("a repeat orders a refill");
        assert_eq!((refill.count, refill.now), (MIN_TARGET, now + 1));
        // While that refill is out, no second one is ordered.
        assert_eq!(stock.take(&k, now + 1).1, None);
        stock.put(&refill, signed(&refill, 10), true);
        let mut nonces = std::collections::HashSet::new();
        for _ in 0..MIN_TARGET {
            let (got, _) = stock.take(&k, now + 2);
            let got = got.expect("served from stock");
            assert_eq!(got.authorization.valid_before, now + 1 + 60);
            nonces.insert(got.authorization.nonce);
        }
        assert_eq!(
            nonces.len(),
            MIN_TARGET,
            "each authorization is handed out once"
        );
        assert!(
            stock.take(&k, now + 2).0.is_none(),
            "and then the shelf is empty"
        );
    }

    #[test]
    fn old_authorizations_expire_and_short_windows_are_never_stocked() {
        let stock = Stock::default();
        let k = key(60);
        let now = 1_800_000_000;
        stock.take(&k, now);
        let refill = stock.take(&k, now).1.unwrap();
        stock.put(&refill, signed(&refill, 0), true);
        // Two seconds later the stocked window is too old: signed fresh instead, and after
        // such a pause the shelf is not refilled until a call follows within the age limit.
        let later = now + MAX_AGE_SECONDS + 1;
        assert_eq!(stock.take(&k, later), (None, None));
        let (got, again) = stock.take(&k, later);
        assert!(got.is_none());
        // A clock that went back never gets a window from its future.
        let refill = again.expect("in use again: refilled for the new second");
        stock.put(&refill, signed(&refill, 50), true);
        assert!(stock.take(&k, now).0.is_none());
        assert!(
            stock.take(&k, later).0.is_some(),
            "kept for the calls of its own second"
        );

        let short = key(MIN_TIMEOUT_SECONDS - 1);
        for _ in 0..3 {
            assert_eq!(stock.take(&short, now), (None, None));
        }
    }

    #[test]
    fn a_pause_resets_the_demand() {
        let stock = Stock::default();
        let k = key(60);
        let now = 1_800_000_000;
        for i in 0..10 {
            // Calls 2 s apart: none orders anything.
            assert_eq!(stock.take(&k, now + 2 * i), (None, None));
        }
        let later = now + 100;
        stock.take(&k, later);
        let refill = stock.take(&k, later).1.unwrap();
        assert_eq!(refill.count, MIN_TARGET, "the new stream starts small");
    }

    #[test]
    fn a_steady_stream_is_refilled_in_few_large_parts_and_little_ages_out() {
        let stock = Stock::default();
        let k = key(60);
        let start = 1_800_000_000;
        let (mut orders, mut signed_total, mut served) = (0, 0, 0);
        // 50 calls a second for 20 seconds; each refill is signed at once.
        for second in start..start + 20 {
            for _ in 0..50 {
                let (got, refill) = stock.take(&k, second);
                served += usize::from(got.is_some());
                if let Some(refill) = refill {
                    orders += 1;
                    signed_total += refill.count;
                    stock.put(&refill, signed(&refill, 0), true);
                }
            }
        }
        assert!(served >= 950, "{served} of 1000 calls served from stock");
        assert!(
            orders <= 100,
            "{orders} refills: one per call or so would be 1000"
        );
        assert!(
            signed_total - served <= 40,
            "{} signed and never used",
            signed_total - served
        );
    }

    #[test]
    fn shelves_with_only_old_stock_make_room() {
        let stock = Stock::default();
        let now = 1_800_000_000;
        for i in 0..MAX_SHELVES as u64 {
            let mut k = key(60);
            k.value = U256::from(i);
            stock.take(&k, now);
            let refill = stock.take(&k, now).1.unwrap();
            stock.put(&refill, signed(&refill, 0), true);
        }
        // Full of shelves that can still serve: a new offer is signed fresh, nothing stocked.
        let new = key(61);
        assert_eq!(stock.take(&new, now), (None, None));
        assert_eq!(stock.take(&new, now), (None, None));
        assert!(!stock.shelves.lock().unwrap().contains_key(&new));
        // Later their stock is too old to serve: they make room.
        let later = now + MAX_AGE_SECONDS + 1;
        stock.take(&new, later);
        assert!(stock.take(&new, later).1.is_some());
        assert!(stock.shelves.lock().unwrap().len() <= 2);
    }

    #[test]
    fn shelves_and_refills_are_bounded() {
        let stock = Stock::default();
        let now = 1_800_000_000;
        for i in 0..(MAX_SHELVES as u64 + 10) {
            let mut k = key(60);
            k.value = U256::from(i);
            // Lone calls: no stock, and idle shelves do not pile up.
            stock.take(&k, now);
        }
        assert!(stock.shelves.lock().unwrap().len() <= MAX_SHELVES);
        let k = key(60);
        stock.take(&k, now);
        let refill = stock.take(&k, now).1.unwrap();
        // More than a shelf holds comes back: the surplus is dropped.
        let mut big = signed(&refill, 0);
        while big.len() < MAX_PER_SHELF * 2 {
            big.extend(signed(&refill, 100));
        }
        stock.put(&refill, big, true);
        let mut served = 0;
        while stock.take(&k, now).0.is_some() {
            served += 1;
        }
        assert_eq!(served, MAX_PER_SHELF);
    }
}
