//! Admission of unauthenticated TLS handshakes, shared by every server that takes connections
//! from peers it does not know yet (the HBONE server, the controller's gRPC server).
//!
//! A handshake costs its server a slot until it completes, and a peer can stall one for as long
//! as its deadline allows. So each source address may hold only a few slots, and when the server
//! is full a new handshake takes the *oldest* one's slot: a stalled handshake has had the longest
//! to finish, while a real client's completes in milliseconds, so a flood must outpace every
//! handshake to keep clients out.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// The handshakes a server has in progress, within its budget. Clones share it.
#[derive(Debug, Clone)]
pub struct HandshakeBudget {
    max: usize,
    max_per_address: usize,
    in_flight: Arc<Mutex<InFlight>>,
}

#[derive(Debug, Default)]
struct InFlight {
    next: u64,
    oldest_first: VecDeque<(u64, Arc<Notify>)>,
    per_address: HashMap<IpAddr, usize>,
}

impl HandshakeBudget {
    /// At most `max` handshakes at once, `max_per_address` of them from one address.
    pub fn new(max: usize, max_per_address: usize) -> Self {
        Self {
            max,
            max_per_address,
            in_flight: Arc::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn max_per_address(&self) -> usize {
        self.max_per_address
    }

    /// A slot for a handshake from `address`, unless that address already holds
    /// `max_per_address`; when the server holds `max`, the oldest handshake is cut
    /// ([`Handshake::cut`]) to make room.
    pub fn admit(&self, address: IpAddr) -> Option<Handshake> {
        let mut in_flight = self.lock();
        let from_address = in_flight.per_address.entry(address).or_default();
        if *from_address >= self.max_per_address {
            if *from_address == 0 {
                in_flight.per_address.remove(&address);
            }
            return None;
        }
        *from_address += 1;
        if in_flight.oldest_first.len() >= self.max
            && let Some((_, oldest)) = in_flight.oldest_first.pop_front()
        {
            oldest.notify_one();
        }
        let id = in_flight.next;
        in_flight.next += 1;
        let cut = Arc::new(Notify::new());
        in_flight.oldest_first.push_back((id, cut.clone()));
        Some(Handshake {
            budget: self.clone(),
            id,
            address,
            cut,
        })
    }

    /// Handshakes in progress.
    pub fn in_flight(&self) -> usize {
        self.lock().oldest_first.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handshake in progress, counted until dropped.
#[derive(Debug)]
pub struct Handshake {
    budget: HandshakeBudget,
    id: u64,
    address: IpAddr,
    cut: Arc<Notify>,
}

impl Handshake {
    /// Completes when this handshake's slot is taken for a newer one: give up then.
    pub async fn cut(&self) {
        self.cut.notified().await;
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut in_flight = self.budget.lock();
        in_flight.oldest_first.retain(|(id, _)| *id != self.id);
        if let Some(n) = in_flight.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                in_flight.per_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_address_holds_at_most_its_share() {
        let budget = HandshakeBudget::new(8, 2);
        let held: Vec<_> = (0..2).map(|_| budget.admit(ip(1)).unwrap()).collect();
        assert!(budget.admit(ip(1)).is_none());
        assert!(budget.admit(ip(2)).is_some(), "another address is admitted");
        drop(held);
        assert!(
            budget.admit(ip(1)).is_some(),
            "a finished handshake frees its place"
        );
    }

    #[tokio::test]
    async fn a_full_server_cuts_the_oldest_for_a_new_one() {
        let budget = HandshakeBudget::new(2, 2);
        let oldest = budget.admit(ip(1)).unwrap();
        let second = budget.admit(ip(2)).unwrap();
        let newest = budget.admit(ip(3)).unwrap();
        tokio::time::timeout(Duration::from_secs(1), oldest.cut())
            .await
            .expect("the oldest handshake was not cut");
        assert_eq!(budget.in_flight(), 2);
        // The others keep going.
        for kept in [&second, &newest] {
            assert!(
                tokio::time::timeout(Duration::from_millis(50), kept.cut())
                    .await
                    .is_err()
            );
        }
        drop(oldest);
        assert_eq!(budget.in_flight(), 2, "a cut handshake was already out");
    }
}
