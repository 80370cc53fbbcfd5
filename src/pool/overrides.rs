//! What the API changed about a pool, apart from its configuration: kept
//! with the pool, saved by the authority before a change is acknowledged,
//! and laid again over the configured pool at start-up and after a
//! configuration edit, until an operator clears it. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::AdminState;
use crate::config::PolicyName;

/// A member the API added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    pub address: IpAddr,
    pub weight: u32,
}

/// The operator's word on one member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberOverride {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "admin_text")]
    pub admin: Option<AdminState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Every setting of one pool that came from the API.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "policy_text")]
    pub policy: Option<PolicyName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub formula: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Configured members taken out (applied before `added`, so a member
    /// removed and added again takes its new address).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub removed: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added: BTreeMap<String, Added>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, MemberOverride>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    pub fn set_policy(&mut self, policy: PolicyName) {
        self.policy = Some(policy);
    }

    pub fn set_formula(&mut self, text: String) {
        self.formula = Some(text);
    }

    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    pub fn add(&mut self, id: &str, address: IpAddr, weight: u32) {
        self.added.insert(id.to_owned(), Added { address, weight });
    }

    /// A member removed: one the API added is simply forgotten.
    pub fn remove(&mut self, id: &str) {
        if self.added.remove(id).is_none() {
            self.removed.insert(id.to_owned());
        }
        self.members.remove(id);
    }

    /// An override of a member's state or weight. `auto` is no override;
    /// a weight equal to the one configured (`configured`) is none either.
    pub fn set_member(&mut self, id: &str, admin: Option<AdminState>, weight: Option<u32>, configured: Option<u32>) {
        let o = self.members.entry(id.to_owned()).or_default();
        if let Some(a) = admin {
            o.admin = (a != AdminState::Auto).then_some(a);
        }
        if let Some(w) = weight {
            o.weight = (Some(w) != configured).then_some(w);
        }
        if o == &MemberOverride::default() {
            self.members.remove(id);
        }
    }

    /// One line per setting, as `vnamed pool overrides` lists them.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(p) = self.policy {
            out.push(format!("policy {p}"));
        }
        if let Some(f) = &self.formula {
            out.push(format!("formula {f}"));
        }
        if self.paused {
            out.push("paused".into());
        }
        out.extend(self.removed.iter().map(|id| format!("member {id} removed")));
        out.extend(self.added.iter().map(|(id, a)| format!("member {id} added at {} weight {}", a.address, a.weight)));
        for (id, o) in &self.members {
            if let Some(a) = o.admin {
                out.push(format!("member {id} admin {}", a.as_str()));
            }
            if let Some(w) = o.weight {
                out.push(format!("member {id} weight {w}"));
            }
        }
        out
    }
}

/// Admin states as their configuration words.
mod admin_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::AdminState;

    pub fn serialize<S: Serializer>(v: &Option<AdminState>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.serialize_some(a.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AdminState>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| AdminState::parse(&t).ok_or_else(|| serde::de::Error::custom(format!("unknown admin state {t}"))))
            .transpose()
    }
}

/// Policies as their configuration words.
mod policy_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::PolicyName;

    pub fn serialize<S: Serializer>(v: &Option<PolicyName>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(p) => s.serialize_some(&p.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PolicyName>, D::Error> {
        Option::<String>::deserialize(d)?.map(|t| t.parse().map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_an_added_member_forgets_it_and_auto_is_no_override() {
        let mut o = Overrides::default();
        o.add("x", "127.0.0.9".parse().unwrap(), 2);
        o.set_member("x", Some(AdminState::Down), None, None);
        o.remove("x");
        assert!(o.is_empty(), "{o:?}");
        o.remove("a");
        assert_eq!(o.removed, BTreeSet::from(["a".to_owned()]), "a configured member taken out is remembered");
        o.set_member("b", Some(AdminState::Drain), Some(3), Some(1));
        o.set_member("b", Some(AdminState::Auto), Some(1), Some(1));
        assert!(!o.members.contains_key("b"), "back to auto and the configured weight: no override left");
    }

    #[test]
    fn overrides_keep_their_words_through_the_store_format() {
        let mut o = Overrides::default();
        o.set_policy(PolicyName::FewestConnections);
        o.set_formula("load * 2".into());
        o.set_paused(true);
        o.add("y", "::1".parse().unwrap(), 5);
        o.set_member("a", Some(AdminState::Down), Some(7), Some(1));
        let text = serde_json::to_string(&o).unwrap();
        assert!(text.contains("\"fewest-connections\"") && text.contains("\"down\""), "{text}");
        assert_eq!(serde_json::from_str::<Overrides>(&text).unwrap(), o);
        assert_eq!(serde_json::from_str::<Overrides>("{}").unwrap(), Overrides::default());
        assert!(serde_json::from_str::<Overrides>(r#"{"policy":"fastest-ever"}"#).is_err());
        assert_eq!(o.lines().len(), 6, "{:?}", o.lines());
    }
}
