//! A small but varied snapshot for tests and fuzz targets: static records
//! of many kinds, a delegation, a wildcard, CNAMEs, and virtual names (one
//! rotating, one with IPv6 members), with its pre-encoded table built.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use hickory_proto::rr::{LowerName, Name};

use super::fast;
use super::snapshot::{PoolAnswer, Snapshot, ZoneView};
use crate::zone::ZoneFile;

pub const ZONE: &str = "\
$TTL 300
@       IN SOA ns1 hostmaster ( 42 3600 600 86400 60 )
        IN NS  ns1
        IN MX  10 mail
ns1     IN A   127.0.0.1
mail    IN A   192.0.2.25
        IN AAAA 2001:db8::25
alias   IN CNAME mail
txt     IN TXT \"hello\" \"world\"
srv     IN SRV 0 5 443 mail
*.wild  IN A   192.0.2.99
sub     IN NS  ns.sub
ns.sub  IN A   192.0.2.53
a.b.c   IN A   192.0.2.3
";

/// Names worth asking about in the fixture.
pub const NAMES: &[&str] = &[
    "example.",
    "ns1.example.",
    "mail.example.",
    "alias.example.",
    "txt.example.",
    "srv.example.",
    "x.wild.example.",
    "host.sub.example.",
    "b.c.example.",
    "a.b.c.example.",
    "www.example.",
    "api.example.",
    "nope.example.",
    "example.org.",
];

pub fn snapshot() -> Snapshot {
    let z = ZoneFile::parse(Path::new("example.zone"), Name::from_ascii("example.").expect("static name"), ZONE.into())
        .expect("fixture zone is valid");
    let mut pools = HashMap::new();
    let www = Name::from_ascii("www.example.").expect("static name");
    let addrs = vec!["127.0.10.1".parse().expect("ip"), "127.0.10.2".parse().expect("ip"), "127.0.10.3".parse().expect("ip")];
    pools.insert(LowerName::from(&www), Arc::new(PoolAnswer::new(www, 5, addrs, 2, true, false)));
    let api = Name::from_ascii("api.example.").expect("static name");
    let addrs = vec!["2001:db8::1".parse().expect("ip"), "127.0.11.1".parse().expect("ip")];
    pools.insert(LowerName::from(&api), Arc::new(PoolAnswer::new(api, 5, addrs, 1, false, false)));
    let view = ZoneView::new(z.data.clone(), 42, pools);
    let mut snap = Snapshot::default();
    snap.zones.insert(view.data.lower_origin.clone(), Arc::new(view));
    snap.fast = fast::build_all(&snap.zones);
    snap
}
