//! Hand-built MQTT packets, byte by byte as the specifications lay them out: for the tests'
//! raw connections (`raw.rs`) and for the load generator of `examples/connections_bench.rs`,
//! which includes this file by its path.

/// Variable Byte Integer (MQTT 5 §1.5.5, 3.1.1 §2.2.3).
pub fn var_int(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return out;
        }
    }
}

/// A length-prefixed UTF-8 string or binary field.
pub fn string(s: impl AsRef<[u8]>) -> Vec<u8> {
    let s = s.as_ref();
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// Fixed header (first byte, remaining length) followed by `body`.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(var_int(body.len()));
    out.extend_from_slice(body);
    out
}

/// One MQTT 5 property with a four-byte integer value (Session Expiry, Will Delay, ...).
pub fn prop_u32(id: u8, v: u32) -> Vec<u8> {
    let mut out = vec![id];
    out.extend(v.to_be_bytes());
    out
}

/// A property block: its length then the properties.
pub fn props(raw: &[u8]) -> Vec<u8> {
    let mut out = var_int(raw.len());
    out.extend_from_slice(raw);
    out
}

/// CONNECT; `v5_props` is `Some` (raw properties, without their length) for MQTT 5.
pub fn connect(client_id: &str, clean: bool, keep_alive: u16, v5_props: Option<&[u8]>) -> Vec<u8> {
    let mut body = string("MQTT");
    body.push(if v5_props.is_some() { 5 } else { 4 });
    body.push(if clean { 0x02 } else { 0x00 });
    body.extend(keep_alive.to_be_bytes());
    if let Some(p) = v5_props {
        body.extend(props(p));
    }
    body.extend(string(client_id));
    packet(0x10, &body)
}

/// CONNECT with a user name and password; MQTT 5 when `v5_props` is `Some`.
pub fn connect_with_login(
    client_id: &str,
    v5_props: Option<&[u8]>,
    username: &str,
    password: &[u8],
) -> Vec<u8> {
    let mut body = string("MQTT");
    body.push(if v5_props.is_some() { 5 } else { 4 });
    body.push(0x02 | 0x80 | 0x40); // clean start, user name, password
    body.extend(60u16.to_be_bytes());
    if let Some(p) = v5_props {
        body.extend(props(p));
    }
    body.extend(string(client_id));
    body.extend(string(username));
    body.extend(string(password));
    packet(0x10, &body)
}

/// A Will for [`connect_with_will`]; `props` are its MQTT 5 properties (ignored for 3.1.1).
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    pub props: &'a [u8],
}

/// CONNECT carrying a Will; MQTT 5 when `v5_props` (the CONNECT's properties) is `Some`.
pub fn connect_with_will(
    client_id: &str,
    clean: bool,
    keep_alive: u16,
    v5_props: Option<&[u8]>,
    will: Will<'_>,
) -> Vec<u8> {
    let mut body = string("MQTT");
    body.push(if v5_props.is_some() { 5 } else { 4 });
    body.push(u8::from(clean) << 1 | 0x04 | will.qos << 3 | u8::from(will.retain) << 5);
    body.extend(keep_alive.to_be_bytes());
    if let Some(p) = v5_props {
        body.extend(props(p));
    }
    body.extend(string(client_id));
    if v5_props.is_some() {
        body.extend(props(will.props));
    }
    body.extend(string(will.topic));
    body.extend(string(will.payload));
    packet(0x10, &body)
}

/// PUBLISH; `v5_props` is `Some` for MQTT 5.
pub fn publish(
    topic: &str,
    qos: u8,
    retain: bool,
    dup: bool,
    pkid: u16,
    v5_props: Option<&[u8]>,
    payload: &[u8],
) -> Vec<u8> {
    let first = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
    let mut body = string(topic);
    if qos > 0 {
        body.extend(pkid.to_be_bytes());
    }
    if let Some(p) = v5_props {
        body.extend(props(p));
    }
    body.extend_from_slice(payload);
    packet(first, &body)
}

/// SUBSCRIBE of one filter with its options byte; `v5_props` is `Some` for MQTT 5.
pub fn subscribe(pkid: u16, filter: &str, options: u8, v5_props: Option<&[u8]>) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if let Some(p) = v5_props {
        body.extend(props(p));
    }
    body.extend(string(filter));
    body.push(options);
    packet(0x82, &body)
}

/// PUBACK (0x40), PUBREC (0x50), PUBREL (0x62) or PUBCOMP (0x70) with reason Success.
pub fn ack(first: u8, pkid: u16) -> Vec<u8> {
    packet(first, &pkid.to_be_bytes())
}

/// MQTT 5 DISCONNECT with a reason code.
pub fn disconnect_v5(reason: u8) -> Vec<u8> {
    packet(0xE0, &[reason, 0])
}
