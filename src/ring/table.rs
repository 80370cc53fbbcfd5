//! The server table: every live ring member with its two buddies, the
//! members it pings and that ping it. Pure data with the three operations
//! of the ring protocol: ServerAnnounce (a member joins and learns its
//! buddies), ServerDelete (a member died or left; its buddies learn each
//! other), and ServerReplace (what a member does to its own buddy list when
//! told to). Generic over the member id so the seed's examples replay with
//! small numbers and the authority uses socket addresses.

use std::collections::BTreeMap;

/// A member's buddies: `[A, B]`. In an address-ordered ring A is the next
/// member and B the previous one; a lone member is its own buddy.
pub type Buddies<T> = [T; 2];

/// Replaces `old` with `new` in a buddy list (ServerReplace); false when
/// `old` is not a buddy.
pub fn replace<T: PartialEq + Copy>(buddies: &mut Buddies<T>, old: T, new: T) -> bool {
    match buddies.iter_mut().find(|b| **b == old) {
        Some(slot) => {
            *slot = new;
            true
        }
        None => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("{0} is already in the ring")]
    Present(String),
    #[error("{0} is not in the ring")]
    Absent(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTable<T: Ord> {
    entries: BTreeMap<T, Buddies<T>>,
}

impl<T: Ord> Default for ServerTable<T> {
    fn default() -> Self {
        Self { entries: BTreeMap::new() }
    }
}

impl<T: Ord + Copy + std::fmt::Debug> ServerTable<T> {
    pub fn new() -> Self {
        Self { entries: BTreeMap::new() }
    }

    pub fn from_entries(entries: impl IntoIterator<Item = (T, Buddies<T>)>) -> Self {
        Self { entries: entries.into_iter().collect() }
    }

    pub fn entries(&self) -> impl Iterator<Item = (&T, &Buddies<T>)> {
        self.entries.iter()
    }

    pub fn buddies(&self, member: &T) -> Option<Buddies<T>> {
        self.entries.get(member).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, member: &T) -> bool {
        self.entries.contains_key(member)
    }

    /// ServerAnnounce as the seed does it: `new` goes in next to `random`,
    /// between it and its buddy A. Returns the new member's buddies.
    pub fn announce_after(&mut self, new: T, random: T) -> Result<Buddies<T>, TableError> {
        if self.entries.contains_key(&new) {
            return Err(TableError::Present(format!("{new:?}")));
        }
        let random_entry = *self.entries.get(&random).ok_or_else(|| TableError::Absent(format!("{random:?}")))?;
        let random_buddy = random_entry[0];
        if random_buddy == random {
            // A lone member: the two watch each other.
            self.entries.insert(random, [new, new]);
            self.entries.insert(new, [random, random]);
            return Ok([random, random]);
        }
        let rb = self.entries.get_mut(&random_buddy).expect("buddies are members");
        replace(rb, random, new);
        let r = self.entries.get_mut(&random).expect("present");
        replace(r, random_buddy, new);
        self.entries.insert(new, [random, random_buddy]);
        Ok([random, random_buddy])
    }

    /// ServerAnnounce keeping the ring ordered: `new` goes between the
    /// largest member below it (its B, the previous one) and that member's
    /// next one (its A). The first member is alone.
    pub fn announce(&mut self, new: T) -> Result<Buddies<T>, TableError> {
        if self.entries.contains_key(&new) {
            return Err(TableError::Present(format!("{new:?}")));
        }
        let Some(prev) = self.entries.range(..new).next_back().or_else(|| self.entries.iter().next_back()).map(|(k, _)| *k) else {
            self.entries.insert(new, [new, new]);
            return Ok([new, new]);
        };
        let next = self.entries[&prev][0];
        if next == prev {
            self.entries.insert(prev, [new, new]);
            self.entries.insert(new, [prev, prev]);
            return Ok([prev, prev]);
        }
        // prev's next becomes new; next's previous becomes new.
        self.entries.get_mut(&prev).expect("present")[0] = new;
        let n = self.entries.get_mut(&next).expect("present");
        if n[1] == prev {
            n[1] = new;
        } else {
            replace(n, prev, new);
        }
        self.entries.insert(new, [next, prev]);
        Ok([next, prev])
    }

    /// ServerDelete: `dead` leaves (it died, or shuts down normally); its
    /// two buddies take each other as buddies in its place. Returns them.
    pub fn delete(&mut self, dead: T) -> Result<Buddies<T>, TableError> {
        let [a, b] = self.entries.remove(&dead).ok_or_else(|| TableError::Absent(format!("{dead:?}")))?;
        if a == dead {
            return Ok([a, b]); // the last member left
        }
        if a == b {
            // Two were left: the survivor is alone.
            self.entries.insert(a, [a, a]);
            return Ok([a, b]);
        }
        if let Some(e) = self.entries.get_mut(&a) {
            replace(e, dead, b);
        }
        if let Some(e) = self.entries.get_mut(&b) {
            replace(e, dead, a);
        }
        Ok([a, b])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rows: &[(u32, u32, u32)]) -> ServerTable<u32> {
        ServerTable::from_entries(rows.iter().map(|&(s, a, b)| (s, [a, b])))
    }

    fn rows(t: &ServerTable<u32>) -> Vec<(u32, u32, u32)> {
        t.entries().map(|(s, [a, b])| (*s, *a, *b)).collect()
    }

    const TABLE_1: &[(u32, u32, u32)] = &[(1, 2, 3), (2, 3, 1), (3, 1, 2)];
    const TABLE_2: &[(u32, u32, u32)] = &[(1, 2, 3), (2, 4, 1), (3, 1, 4), (4, 2, 3)];
    const TABLE_4: &[(u32, u32, u32)] = &[(1, 2, 4), (2, 4, 1), (4, 2, 1)];

    #[test]
    fn table_1_to_table_2_server_4_joins_after_server_2() {
        let mut t = table(TABLE_1);
        let buddies = t.announce_after(4, 2).unwrap();
        assert_eq!(buddies, [2, 3], "ServerAnnounce returns RandomServer and RandomBuddy");
        assert_eq!(rows(&t), TABLE_2);
        // Server 4 then tells its buddies (ServerReplace): 2 replaces 3 with 4, 3 replaces 2 with 4.
        let (mut list2, mut list3) = ([3, 1], [1, 2]);
        assert!(replace(&mut list2, 3, 4) && replace(&mut list3, 2, 4));
        assert_eq!((list2, list3), (t.buddies(&2).unwrap(), t.buddies(&3).unwrap()), "buddy lists match Table 2");
    }

    #[test]
    fn table_3_to_table_4_server_3_dies_found_by_server_4() {
        let mut t = table(TABLE_2); // Table 3 is Table 2
        let buddies = t.delete(3).unwrap();
        assert_eq!(buddies, [1, 4], "ServerDelete returns the dead server's buddies");
        assert_eq!(rows(&t), TABLE_4);
        // The discovering server 4 is one of them; it tells server 1: ServerReplace(3 -> 4).
        let mut list1 = [2, 3];
        assert!(replace(&mut list1, 3, 4));
        assert_eq!(list1, t.buddies(&1).unwrap());
    }

    #[test]
    fn server_2_shuts_down_normally_from_table_4() {
        let mut t = table(TABLE_4);
        let [a, b] = t.delete(2).unwrap();
        assert_eq!((a, b), (4, 1));
        // Then ServerReplace on each buddy: 4 replaces 2 with 1, 1 replaces 2 with 4.
        let (mut list4, mut list1) = ([2, 1], [2, 4]);
        assert!(replace(&mut list4, 2, 1) && replace(&mut list1, 2, 4));
        assert_eq!(rows(&t), vec![(1, 4, 4), (4, 1, 1)]);
        assert_eq!(list4, [1, 1]);
        assert_eq!(list1, [4, 4]);
    }

    #[test]
    fn table_5_n_members_ordered_by_address() {
        for n in [1u32, 2, 3, 5, 64] {
            let mut t = ServerTable::new();
            // Join in a scrambled order: the ring still ends up ordered.
            let mut order: Vec<u32> = (1..=n).collect();
            order.sort_by_key(|x| (x * 7919) % (n + 13));
            for s in order {
                t.announce(s).unwrap();
            }
            for s in 1..=n {
                let next = if s == n { 1 } else { s + 1 };
                let prev = if s == 1 { n } else { s - 1 };
                let want = if n == 1 {
                    [1, 1]
                } else if n == 2 {
                    [next, next]
                } else {
                    [next, prev]
                };
                assert_eq!(t.buddies(&s).unwrap(), want, "server {s} of {n}");
            }
        }
    }

    #[test]
    fn the_seed_ring_2_5_6_joined_by_4() {
        let mut t = ServerTable::new();
        for s in [2u32, 5, 6] {
            t.announce(s).unwrap();
        }
        assert_eq!(t.announce(4).unwrap(), [5, 2], "4 sits between .2 and .5");
        assert_eq!(rows(&t), vec![(2, 4, 6), (4, 5, 2), (5, 6, 4), (6, 2, 5)]);
    }

    #[test]
    fn deaths_down_to_a_lone_survivor_and_errors() {
        let mut t = ServerTable::new();
        for s in [1u32, 2, 3] {
            t.announce(s).unwrap();
        }
        t.delete(2).unwrap();
        assert_eq!(rows(&t), vec![(1, 3, 3), (3, 1, 1)]);
        t.delete(3).unwrap();
        assert_eq!(rows(&t), vec![(1, 1, 1)], "a lone survivor watches no one");
        assert_eq!(t.delete(9), Err(TableError::Absent("9".into())));
        assert_eq!(t.announce(1), Err(TableError::Present("1".into())));
        t.delete(1).unwrap();
        assert!(t.is_empty());
    }
}
