//! Which workload a pod IP belongs to when two pods claim it. During IP reuse the apiserver can
//! list a pod that still shows an address (its status not yet updated, its node gone) next to
//! the new pod the address went to. Data planes index workloads by IP and refuse a model where
//! two workloads share one, so the controller decides, the same way whatever the event order:
//! the newest pod (creation time, then uid) holds the IP, the others are listed without it.
//! Pods being deleted or finished never claim (the index leaves them out of the mesh).

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How a claimant ranks: the greatest holds the IP.
pub type Rank = (Option<k8s_openapi::jiff::Timestamp>, String);

#[derive(Debug, Default)]
pub struct IpClaims {
    /// IP -> claimants, best last.
    by_ip: HashMap<String, BTreeSet<Rank>>,
    /// uid -> its rank and the IPs it claims.
    of_uid: HashMap<String, (Rank, Vec<String>)>,
}

impl IpClaims {
    pub fn clear(&mut self) {
        self.by_ip.clear();
        self.of_uid.clear();
    }

    /// Records that pod `uid` (ranked by `created`) claims `ips` (none: it claims nothing now).
    /// Returns the other pods whose share of those IPs changed: their workloads need
    /// recomputing. Claiming what is already recorded changes nothing.
    pub fn claim(
        &mut self,
        uid: &str,
        created: Option<k8s_openapi::jiff::Timestamp>,
        ips: &[String],
    ) -> BTreeSet<String> {
        let rank: Rank = (created, uid.to_owned());
        if self
            .of_uid
            .get(uid)
            .is_some_and(|(r, held)| *r == rank && held == ips)
        {
            return BTreeSet::new();
        }
        let previous = self.of_uid.remove(uid);
        let touched: BTreeSet<String> = previous
            .iter()
            .flat_map(|(_, held)| held.iter())
            .chain(ips)
            .cloned()
            .collect();
        let owners_before: BTreeMap<&String, Option<String>> =
            touched.iter().map(|ip| (ip, self.owner(ip))).collect();
        if let Some((old_rank, held)) = &previous {
            for ip in held {
                if let Some(claimants) = self.by_ip.get_mut(ip) {
                    claimants.remove(old_rank);
                    if claimants.is_empty() {
                        self.by_ip.remove(ip);
                    }
                }
            }
        }
        if !ips.is_empty() {
            for ip in ips {
                self.by_ip
                    .entry(ip.clone())
                    .or_default()
                    .insert(rank.clone());
            }
            self.of_uid.insert(uid.to_owned(), (rank, ips.to_vec()));
        }
        owners_before
            .into_iter()
            .filter_map(|(ip, before)| {
                let after = self.owner(ip);
                (before != after).then_some([before, after])
            })
            .flatten()
            .flatten()
            .filter(|owner| owner != uid)
            .collect()
    }

    /// The pod holding `ip`, if any claims it.
    pub fn owner(&self, ip: &str) -> Option<String> {
        self.by_ip
            .get(ip)
            .and_then(|c| c.last())
            .map(|(_, uid)| uid.clone())
    }

    /// Keeps of `ips` those `uid` holds.
    pub fn keep_held(&self, uid: &str, ips: &mut Vec<String>) {
        ips.retain(|ip| self.owner(ip).is_none_or(|owner| owner == uid));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(seconds: i64) -> Option<k8s_openapi::jiff::Timestamp> {
        Some(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn ips(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn held(claims: &IpClaims, uid: &str, list: &[&str]) -> Vec<String> {
        let mut v = ips(list);
        claims.keep_held(uid, &mut v);
        v
    }

    #[test]
    fn the_newest_pod_holds_a_reused_ip_whatever_the_event_order() {
        for old_first in [true, false] {
            let mut claims = IpClaims::default();
            let (old, new) = (("old", at(100)), ("new", at(200)));
            let order = if old_first { [old, new] } else { [new, old] };
            let mut told = BTreeSet::new();
            for (uid, created) in order {
                told.extend(claims.claim(uid, created, &ips(&["10.0.0.5"])));
            }
            assert_eq!(claims.owner("10.0.0.5").as_deref(), Some("new"));
            assert_eq!(held(&claims, "old", &["10.0.0.5"]), Vec::<String>::new());
            assert_eq!(held(&claims, "new", &["10.0.0.5"]), ["10.0.0.5"]);
            if old_first {
                // The old pod lost its IP: its workload is recomputed.
                assert_eq!(told, BTreeSet::from(["old".to_string()]));
            } else {
                assert!(told.is_empty(), "{told:?}");
            }
        }
    }

    #[test]
    fn equal_creation_times_are_decided_by_uid_and_a_release_hands_the_ip_on() {
        let mut claims = IpClaims::default();
        claims.claim("a", at(100), &ips(&["10.0.0.5", "fd00::5"]));
        let told = claims.claim("b", at(100), &ips(&["10.0.0.5"]));
        assert_eq!(told, BTreeSet::from(["a".to_string()]));
        assert_eq!(
            held(&claims, "a", &["10.0.0.5", "fd00::5"]),
            ["fd00::5"],
            "a keeps the IP nobody else claims"
        );
        // Claiming the same again is no change.
        assert!(claims.claim("b", at(100), &ips(&["10.0.0.5"])).is_empty());
        // b finishes (or is deleted): a holds the IP again, and is told.
        let told = claims.claim("b", None, &[]);
        assert_eq!(told, BTreeSet::from(["a".to_string()]));
        assert_eq!(claims.owner("10.0.0.5").as_deref(), Some("a"));
        assert!(claims.claim("a", None, &[]).is_empty());
        assert_eq!(claims.owner("10.0.0.5"), None);
        assert!(claims.by_ip.is_empty() && claims.of_uid.is_empty());
    }
}
