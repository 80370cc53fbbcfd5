//! The SQL Server Resolution Protocol on the wire ([MC-SQLR], UDP 1434):
//! the four client requests and the server's SVR_RESP, both ways. Pure:
//! decoding refuses anything malformed with a reason, and encoding keeps
//! replies within the specification's size limits.

use std::fmt::Write;

/// CLNT_BCAST_EX: every instance, broadcast or multicast.
pub const CLNT_BCAST_EX: u8 = 0x02;
/// CLNT_UCAST_EX: every instance of one machine.
pub const CLNT_UCAST_EX: u8 = 0x03;
/// CLNT_UCAST_INST: one instance.
pub const CLNT_UCAST_INST: u8 = 0x04;
pub const SVR_RESP: u8 = 0x05;
/// CLNT_UCAST_DAC: the dedicated administrator connection of one instance.
pub const CLNT_UCAST_DAC: u8 = 0x0F;
/// INSTANCENAME in a request, at most (not counting the NUL).
pub const MAX_INSTANCE_NAME: usize = 32;
/// RESP_DATA for one instance (CLNT_UCAST_INST), at most.
pub const MAX_INSTANCE_RESPONSE: usize = 1024;
/// RESP_DATA for an enumeration, at most.
pub const MAX_ENUM_RESPONSE: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrpError {
    #[error("empty datagram")]
    Empty,
    #[error("unknown request type 0x{0:02x}")]
    Kind(u8),
    #[error("{0} has trailing bytes")]
    Trailing(&'static str),
    #[error("instance name missing")]
    NoName,
    #[error("instance name longer than 32 bytes")]
    LongName,
    #[error("instance name is not text")]
    BadName,
    #[error("DAC protocol version {0} (expected 1)")]
    DacVersion(u8),
    #[error("not a server response")]
    NotResponse,
    #[error("response size {declared} does not match the {actual} bytes that follow")]
    Size { declared: usize, actual: usize },
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    BroadcastEx,
    UnicastEx,
    Instance(String),
    Dac(String),
}

impl Request {
    pub fn decode(data: &[u8]) -> Result<Self, SrpError> {
        let (&kind, rest) = data.split_first().ok_or(SrpError::Empty)?;
        match kind {
            CLNT_BCAST_EX | CLNT_UCAST_EX => {
                if !rest.is_empty() {
                    return Err(SrpError::Trailing("an enumeration request"));
                }
                Ok(if kind == CLNT_BCAST_EX { Self::BroadcastEx } else { Self::UnicastEx })
            }
            CLNT_UCAST_INST => Ok(Self::Instance(name(rest)?)),
            CLNT_UCAST_DAC => {
                let (&version, rest) = rest.split_first().ok_or(SrpError::NoName)?;
                if version != 1 {
                    return Err(SrpError::DacVersion(version));
                }
                Ok(Self::Dac(name(rest)?))
            }
            k => Err(SrpError::Kind(k)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::BroadcastEx => vec![CLNT_BCAST_EX],
            Self::UnicastEx => vec![CLNT_UCAST_EX],
            Self::Instance(n) => [&[CLNT_UCAST_INST][..], n.as_bytes(), &[0]].concat(),
            Self::Dac(n) => [&[CLNT_UCAST_DAC, 1][..], n.as_bytes(), &[0]].concat(),
        }
    }
}

/// INSTANCENAME: NUL-terminated, at most 32 bytes. Clients that leave the
/// NUL out are common, so a missing terminator is accepted; anything after
/// the NUL is not.
fn name(b: &[u8]) -> Result<String, SrpError> {
    let b = match b.iter().position(|&c| c == 0) {
        Some(i) if i + 1 == b.len() => &b[..i],
        Some(_) => return Err(SrpError::Trailing("the instance name")),
        None => b,
    };
    if b.is_empty() {
        return Err(SrpError::NoName);
    }
    if b.len() > MAX_INSTANCE_NAME {
        return Err(SrpError::LongName);
    }
    let s = std::str::from_utf8(b).map_err(|_| SrpError::BadName)?;
    if s.chars().any(|c| c.is_control() || c == ';') {
        return Err(SrpError::BadName);
    }
    Ok(s.to_owned())
}

/// One instance in a response: its name, and how to reach it per protocol.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceInfo {
    pub server_name: String,
    pub instance_name: String,
    pub clustered: bool,
    pub version: String,
    /// `np`: the pipe name.
    pub np: Option<String>,
    /// `tcp`: the port.
    pub tcp: Option<u16>,
    /// `via`: NetBIOS name and `,nic:port` list, as one text.
    pub via: Option<String>,
    /// Other protocols (`rpc`, `spx`, `adsp`, `bv`) as they came.
    pub other: Vec<(String, String)>,
}

impl InstanceInfo {
    /// This instance's CLNT_UCAST_INST_RESPONSE text. Protocols that would
    /// take it past `limit` bytes are left out, as the specification says.
    pub fn to_text(&self, limit: usize) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "ServerName;{};InstanceName;{};IsClustered;{};Version;{}",
            self.server_name,
            self.instance_name,
            if self.clustered { "Yes" } else { "No" },
            self.version
        );
        let mut protos: Vec<(&str, String)> = Vec::new();
        if let Some(np) = &self.np {
            protos.push(("np", np.clone()));
        }
        if let Some(tcp) = self.tcp {
            protos.push(("tcp", tcp.to_string()));
        }
        if let Some(via) = &self.via {
            protos.push(("via", via.clone()));
        }
        protos.extend(self.other.iter().map(|(k, v)| (k.as_str(), v.clone())));
        for (k, v) in protos {
            if s.len() + k.len() + v.len() + 2 + 2 <= limit {
                let _ = write!(s, ";{k};{v}");
            }
        }
        s.push_str(";;");
        s
    }
}

/// SVR_RESP for one instance (CLNT_UCAST_INST).
pub fn encode_instance(info: &InstanceInfo) -> Vec<u8> {
    frame(&info.to_text(MAX_INSTANCE_RESPONSE))
}

/// SVR_RESP for an enumeration: as many whole instances as fit.
pub fn encode_enumeration(infos: &[InstanceInfo]) -> Vec<u8> {
    let mut data = String::new();
    for i in infos {
        let t = i.to_text(MAX_INSTANCE_RESPONSE);
        if data.len() + t.len() > MAX_ENUM_RESPONSE {
            break;
        }
        data.push_str(&t);
    }
    frame(&data)
}

/// SVR_RESP (DAC): protocol version 1 and the DAC's TCP port.
pub fn encode_dac(port: u16) -> Vec<u8> {
    let mut out = vec![SVR_RESP, 6, 0, 1];
    out.extend_from_slice(&port.to_le_bytes());
    out
}

fn frame(data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + data.len());
    out.push(SVR_RESP);
    out.extend_from_slice(&(data.len() as u16).to_le_bytes());
    out.extend_from_slice(data.as_bytes());
    out
}

/// Decodes an SVR_RESP to a CLNT_UCAST_INST or an enumeration.
pub fn decode_response(data: &[u8]) -> Result<Vec<InstanceInfo>, SrpError> {
    if data.len() < 3 || data[0] != SVR_RESP {
        return Err(SrpError::NotResponse);
    }
    let declared = u16::from_le_bytes([data[1], data[2]]) as usize;
    let body = &data[3..];
    if declared != body.len() {
        return Err(SrpError::Size { declared, actual: body.len() });
    }
    let text = std::str::from_utf8(body).map_err(|_| SrpError::Malformed("not text".into()))?;
    let mut out = Vec::new();
    for block in text.split(";;").filter(|b| !b.is_empty()) {
        let fields: Vec<&str> = block.split(';').collect();
        if !fields.len().is_multiple_of(2) {
            return Err(SrpError::Malformed(format!("odd number of fields in {block:?}")));
        }
        let mut info = InstanceInfo::default();
        let mut seen_name = false;
        for pair in fields.chunks(2) {
            let (k, v) = (pair[0], pair[1]);
            match k {
                "ServerName" => info.server_name = v.to_owned(),
                "InstanceName" => {
                    info.instance_name = v.to_owned();
                    seen_name = true;
                }
                "IsClustered" => info.clustered = v.eq_ignore_ascii_case("yes"),
                "Version" => info.version = v.to_owned(),
                "np" => info.np = Some(v.to_owned()),
                "tcp" => info.tcp = Some(v.parse().map_err(|_| SrpError::Malformed(format!("tcp port {v:?}")))?),
                "via" => info.via = Some(v.to_owned()),
                other => info.other.push((other.to_owned(), v.to_owned())),
            }
        }
        if !seen_name {
            return Err(SrpError::Malformed(format!("no InstanceName in {block:?}")));
        }
        out.push(info);
    }
    Ok(out)
}

/// Decodes an SVR_RESP (DAC) to the DAC port.
pub fn decode_dac(data: &[u8]) -> Result<u16, SrpError> {
    match data {
        [SVR_RESP, 6, 0, 1, lo, hi] => Ok(u16::from_le_bytes([*lo, *hi])),
        [SVR_RESP, ..] => Err(SrpError::Malformed("DAC response".into())),
        _ => Err(SrpError::NotResponse),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [MC-SQLR] section 4: a client asks for instance YUKONSTD and the
    /// server answers with its TCP port.
    const SPEC_REPLY: &str = "ServerName;ILSUNG1;InstanceName;YUKONSTD;IsClustered;No;Version;9.00.1399.06;tcp;57137;;";

    fn yukonstd() -> InstanceInfo {
        InstanceInfo {
            server_name: "ILSUNG1".into(),
            instance_name: "YUKONSTD".into(),
            version: "9.00.1399.06".into(),
            tcp: Some(57137),
            ..Default::default()
        }
    }

    #[test]
    fn the_specification_example_exchange() {
        let request = [&[0x04][..], b"YUKONSTD", &[0]].concat();
        assert_eq!(Request::decode(&request), Ok(Request::Instance("YUKONSTD".into())));
        assert_eq!(Request::Instance("YUKONSTD".into()).encode(), request);
        let reply = encode_instance(&yukonstd());
        assert_eq!(&reply[..3], &[0x05, 0x58, 0x00], "RESP_SIZE 88, little-endian");
        assert_eq!(&reply[3..], SPEC_REPLY.as_bytes());
        assert_eq!(decode_response(&reply).unwrap(), vec![yukonstd()]);
    }

    #[test]
    fn enumeration_and_dac() {
        assert_eq!(Request::decode(&[0x02]), Ok(Request::BroadcastEx));
        assert_eq!(Request::decode(&[0x03]), Ok(Request::UnicastEx));
        let mut second = yukonstd();
        second.instance_name = "YUKONDEV".into();
        second.tcp = None;
        second.np = Some(r"\\ILSUNG1\pipe\MSSQL$YUKONDEV\sql\query".into());
        let reply = encode_enumeration(&[yukonstd(), second.clone()]);
        assert_eq!(decode_response(&reply).unwrap(), vec![yukonstd(), second]);
        let dac = [&[0x0F, 0x01][..], b"YUKONSTD", &[0]].concat();
        assert_eq!(Request::decode(&dac), Ok(Request::Dac("YUKONSTD".into())));
        assert_eq!(encode_dac(1434), vec![0x05, 0x06, 0x00, 0x01, 0x9a, 0x05]);
        assert_eq!(decode_dac(&encode_dac(1434)), Ok(1434));
    }

    #[test]
    fn a_name_without_its_nul_is_accepted() {
        assert_eq!(Request::decode(b"\x04YUKONSTD"), Ok(Request::Instance("YUKONSTD".into())));
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert_eq!(Request::decode(b""), Err(SrpError::Empty));
        assert_eq!(Request::decode(b"\x03x"), Err(SrpError::Trailing("an enumeration request")));
        assert_eq!(Request::decode(b"\x04\x00"), Err(SrpError::NoName));
        assert_eq!(Request::decode(b"\x04"), Err(SrpError::NoName));
        assert_eq!(Request::decode(&[&[4u8][..], &[b'A'; 33], &[0]].concat()), Err(SrpError::LongName));
        assert!(Request::decode(&[&[4u8][..], &[b'A'; 32], &[0]].concat()).is_ok());
        assert_eq!(Request::decode(b"\x04AB\x00CD"), Err(SrpError::Trailing("the instance name")));
        assert_eq!(Request::decode(b"\x04A;B"), Err(SrpError::BadName));
        assert_eq!(Request::decode(b"\x04\xff\xfe"), Err(SrpError::BadName));
        assert_eq!(Request::decode(b"\x0F\x02A"), Err(SrpError::DacVersion(2)));
        assert_eq!(Request::decode(b"\x05"), Err(SrpError::Kind(5)));
        assert_eq!(Request::decode(b"\x0a"), Err(SrpError::Kind(0x0a)));
    }

    #[test]
    fn malformed_responses_are_refused() {
        assert_eq!(decode_response(b"\x04\x00\x00"), Err(SrpError::NotResponse));
        assert_eq!(decode_response(b"\x05\x09\x00abc"), Err(SrpError::Size { declared: 9, actual: 3 }));
        assert!(decode_response(b"\x05\x0b\x00ServerName;;").is_err());
        assert!(decode_response(b"\x05\x13\x00InstanceName;A;tcp;x;;").is_err());
    }

    #[test]
    fn replies_stay_within_the_limits() {
        let mut big = yukonstd();
        big.np = Some("p".repeat(900));
        big.via = Some("v".repeat(500));
        let reply = encode_instance(&big);
        assert!(reply.len() - 3 <= MAX_INSTANCE_RESPONSE);
        let back = &decode_response(&reply).unwrap()[0];
        assert_eq!(back.np, big.np, "the pipe fits");
        assert_eq!(back.tcp, Some(57137), "and the port after it");
        assert_eq!(back.via, None, "the protocol that would not fit is left out");
        let many: Vec<InstanceInfo> = (0..2000).map(|i| InstanceInfo { instance_name: format!("I{i}"), ..big.clone() }).collect();
        let reply = encode_enumeration(&many);
        assert!(reply.len() - 3 <= MAX_ENUM_RESPONSE);
        assert!(decode_response(&reply).unwrap().len() > 10);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 0x2545F4914F6CDD1Du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 48) as usize;
            let bytes: Vec<u8> = (0..n).map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8).collect();
            let _ = Request::decode(&bytes);
            let _ = decode_response(&bytes);
            let _ = decode_dac(&bytes);
        }
    }
}
