//! Just enough of the TDS PRELOGIN exchange ([MS-TDS] 2.2.6.5) to verify
//! that the server at an endpoint answers to an instance name (the INSTOPT
//! option), both sides. Pure.

const PRELOGIN: u8 = 0x12;
const RESPONSE: u8 = 0x04;
const VERSION: u8 = 0x00;
const ENCRYPTION: u8 = 0x01;
const INSTOPT: u8 = 0x02;
const TERMINATOR: u8 = 0xFF;
/// ENCRYPT_NOT_SUP.
const NO_ENCRYPTION: u8 = 0x02;
pub const HEADER: usize = 8;

fn packet(kind: u8, options: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let table = options.len() * 5 + 1;
    let mut payload = Vec::new();
    let mut data = Vec::new();
    for (token, value) in options {
        payload.push(*token);
        payload.extend_from_slice(&((table + data.len()) as u16).to_be_bytes());
        payload.extend_from_slice(&(value.len() as u16).to_be_bytes());
        data.extend_from_slice(value);
    }
    payload.push(TERMINATOR);
    payload.extend_from_slice(&data);
    let mut out = vec![kind, 0x01];
    out.extend_from_slice(&((HEADER + payload.len()) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 1, 0]);
    out.extend_from_slice(&payload);
    out
}

/// The options of a PRELOGIN packet of `kind`, or `None` if malformed.
fn options(kind: u8, p: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    if p.len() < HEADER || p[0] != kind || u16::from_be_bytes([p[2], p[3]]) as usize != p.len() {
        return None;
    }
    let payload = &p[HEADER..];
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let token = *payload.get(i)?;
        if token == TERMINATOR {
            return Some(out);
        }
        let entry = payload.get(i + 1..i + 5)?;
        let (off, len) = (u16::from_be_bytes([entry[0], entry[1]]) as usize, u16::from_be_bytes([entry[2], entry[3]]) as usize);
        out.push((token, payload.get(off..off.checked_add(len)?)?));
        i += 5;
        if out.len() > 32 {
            return None;
        }
    }
}

/// A client's PRELOGIN naming the instance it wants.
pub fn prelogin(instance: &str) -> Vec<u8> {
    let mut name = instance.as_bytes().to_vec();
    name.push(0);
    packet(PRELOGIN, &[(VERSION, vec![0, 0, 0, 0, 0, 0]), (ENCRYPTION, vec![NO_ENCRYPTION]), (INSTOPT, name)])
}

/// The total length a TDS packet header announces.
pub fn packet_len(header: &[u8; HEADER]) -> usize {
    u16::from_be_bytes([header[2], header[3]]) as usize
}

/// Did the server accept the instance name? `None`: not a PRELOGIN
/// response with INSTOPT.
pub fn instance_accepted(response: &[u8]) -> Option<bool> {
    let opts = options(RESPONSE, response)?;
    let (_, v) = opts.into_iter().find(|(t, _)| *t == INSTOPT)?;
    Some(v.first() == Some(&0))
}

/// Server side: the instance a client's PRELOGIN names, if any.
pub fn requested_instance(request: &[u8]) -> Option<String> {
    let opts = options(PRELOGIN, request)?;
    let (_, v) = opts.into_iter().find(|(t, _)| *t == INSTOPT)?;
    let v = v.strip_suffix(&[0]).unwrap_or(v);
    std::str::from_utf8(v).ok().map(str::to_owned)
}

/// Server side: the PRELOGIN response, accepting the instance or not.
pub fn response(accept: bool) -> Vec<u8> {
    packet(RESPONSE, &[(VERSION, vec![16, 0, 0x03, 0xE8, 0, 0]), (ENCRYPTION, vec![NO_ENCRYPTION]), (INSTOPT, vec![u8::from(!accept)])])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree() {
        let req = prelogin("SALES");
        assert_eq!(requested_instance(&req).as_deref(), Some("SALES"));
        assert_eq!(instance_accepted(&response(true)), Some(true));
        assert_eq!(instance_accepted(&response(false)), Some(false));
        assert_eq!(instance_accepted(&req), None, "a request is not a response");
        assert_eq!(instance_accepted(b"HTTP/1.1 200 OK\r\n"), None);
        for n in 0..req.len() {
            assert_eq!(requested_instance(&req[..n]), None);
        }
    }
}
