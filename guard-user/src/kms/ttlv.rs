//! KMIP's TTLV encoding (OASIS KMIP 1.x, section 9.1): every item is a 3-byte
//! tag, a 1-byte type, a 4-byte big-endian length and a value padded to a
//! multiple of 8 bytes. Only the types guard's KMIP client uses are supported.

use anyhow::{bail, ensure, Context, Result};

/// A decoded or to-be-encoded TTLV item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub tag: u32,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Structure(Vec<Item>),
    Integer(i32),
    LongInteger(i64),
    Enumeration(u32),
    Boolean(bool),
    TextString(String),
    ByteString(Vec<u8>),
    DateTime(i64),
    Interval(u32),
    /// A type guard does not interpret (e.g. Big Integer); kept as bytes.
    Other(u8, Vec<u8>),
}

const TYPE_STRUCTURE: u8 = 0x01;
const TYPE_INTEGER: u8 = 0x02;
const TYPE_LONG_INTEGER: u8 = 0x03;
const TYPE_ENUMERATION: u8 = 0x05;
const TYPE_BOOLEAN: u8 = 0x06;
const TYPE_TEXT_STRING: u8 = 0x07;
const TYPE_BYTE_STRING: u8 = 0x08;
const TYPE_DATE_TIME: u8 = 0x09;
const TYPE_INTERVAL: u8 = 0x0A;

/// Deepest structure nesting accepted from the network.
const MAX_DEPTH: usize = 16;

impl Item {
    pub fn structure(tag: u32, items: Vec<Item>) -> Self {
        Self {
            tag,
            value: Value::Structure(items),
        }
    }
    pub fn integer(tag: u32, v: i32) -> Self {
        Self {
            tag,
            value: Value::Integer(v),
        }
    }
    pub fn enumeration(tag: u32, v: u32) -> Self {
        Self {
            tag,
            value: Value::Enumeration(v),
        }
    }
    pub fn text(tag: u32, v: &str) -> Self {
        Self {
            tag,
            value: Value::TextString(v.to_string()),
        }
    }
    pub fn bytes(tag: u32, v: &[u8]) -> Self {
        Self {
            tag,
            value: Value::ByteString(v.to_vec()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.tag.to_be_bytes()[1..]);
        let (kind, body): (u8, Vec<u8>) = match &self.value {
            Value::Structure(items) => {
                let mut body = Vec::new();
                for item in items {
                    item.encode_into(&mut body);
                }
                (TYPE_STRUCTURE, body)
            }
            Value::Integer(v) => (TYPE_INTEGER, v.to_be_bytes().to_vec()),
            Value::LongInteger(v) => (TYPE_LONG_INTEGER, v.to_be_bytes().to_vec()),
            Value::Enumeration(v) => (TYPE_ENUMERATION, v.to_be_bytes().to_vec()),
            Value::Boolean(v) => (TYPE_BOOLEAN, u64::from(*v).to_be_bytes().to_vec()),
            Value::TextString(v) => (TYPE_TEXT_STRING, v.as_bytes().to_vec()),
            Value::ByteString(v) => (TYPE_BYTE_STRING, v.clone()),
            Value::DateTime(v) => (TYPE_DATE_TIME, v.to_be_bytes().to_vec()),
            Value::Interval(v) => (TYPE_INTERVAL, v.to_be_bytes().to_vec()),
            Value::Other(kind, v) => (*kind, v.clone()),
        };
        out.push(kind);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.resize(out.len() + (8 - body.len() % 8) % 8, 0);
    }

    /// Decodes exactly one item filling `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let (item, used) = decode_at(bytes, 0, 0)?;
        ensure!(
            used == bytes.len(),
            "{} trailing bytes after the TTLV message",
            bytes.len() - used
        );
        Ok(item)
    }

    /// The first child with `tag`, if this is a structure.
    pub fn child(&self, tag: u32) -> Option<&Item> {
        self.children().iter().find(|i| i.tag == tag)
    }

    /// Every child with `tag`.
    pub fn all(&self, tag: u32) -> impl Iterator<Item = &Item> {
        self.children().iter().filter(move |i| i.tag == tag)
    }

    pub fn children(&self) -> &[Item] {
        match &self.value {
            Value::Structure(items) => items,
            _ => &[],
        }
    }

    /// The child with `tag`, which must exist.
    pub fn require(&self, tag: u32) -> Result<&Item> {
        self.child(tag)
            .with_context(|| format!("KMIP item {:#08x} lacks field {tag:#08x}", self.tag))
    }

    pub fn as_text(&self) -> Result<&str> {
        match &self.value {
            Value::TextString(s) => Ok(s),
            other => bail!(
                "KMIP field {:#08x} is {other:?}, expected a text string",
                self.tag
            ),
        }
    }

    pub fn as_bytes(&self) -> Result<&[u8]> {
        match &self.value {
            Value::ByteString(b) => Ok(b),
            other => bail!(
                "KMIP field {:#08x} is {}, expected a byte string",
                self.tag,
                kind_name(other)
            ),
        }
    }

    pub fn as_enum(&self) -> Result<u32> {
        match &self.value {
            Value::Enumeration(v) => Ok(*v),
            other => bail!(
                "KMIP field {:#08x} is {other:?}, expected an enumeration",
                self.tag
            ),
        }
    }
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Structure(_) => "a structure",
        Value::Integer(_) => "an integer",
        Value::LongInteger(_) => "a long integer",
        Value::Enumeration(_) => "an enumeration",
        Value::Boolean(_) => "a boolean",
        Value::TextString(_) => "a text string",
        Value::ByteString(_) => "a byte string",
        Value::DateTime(_) => "a date-time",
        Value::Interval(_) => "an interval",
        Value::Other(..) => "an unsupported type",
    }
}

/// Length of the whole message whose 8-byte header is `header`, padding
/// included (a value is padded to a multiple of 8 bytes).
pub fn message_len(header: &[u8; 8]) -> usize {
    let len = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
    8 + len.div_ceil(8) * 8
}

fn decode_at(bytes: &[u8], at: usize, depth: usize) -> Result<(Item, usize)> {
    ensure!(
        depth <= MAX_DEPTH,
        "TTLV nested deeper than {MAX_DEPTH} levels"
    );
    ensure!(
        bytes.len() >= at + 8,
        "TTLV item at offset {at} is truncated"
    );
    let h = &bytes[at..at + 8];
    ensure!(
        h[0] == 0x42,
        "TTLV tag at offset {at} does not start with 0x42 (not KMIP)"
    );
    let tag = u32::from_be_bytes([0, h[0], h[1], h[2]]);
    let kind = h[3];
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let start = at + 8;
    let padded = len
        .checked_add((8 - len % 8) % 8)
        .context("TTLV length overflows")?;
    ensure!(
        bytes.len() >= start + padded,
        "TTLV item {tag:#08x} claims {len} bytes, only {} left",
        bytes.len() - start
    );
    let body = &bytes[start..start + len];
    let fixed = |n: usize| -> Result<()> {
        ensure!(
            len == n,
            "TTLV item {tag:#08x} of type {kind} has length {len}, expected {n}"
        );
        Ok(())
    };
    let value = match kind {
        TYPE_STRUCTURE => {
            let mut items = Vec::new();
            let mut pos = start;
            while pos < start + len {
                let (item, next) = decode_at(&bytes[..start + len], pos, depth + 1)?;
                items.push(item);
                pos = next;
            }
            Value::Structure(items)
        }
        TYPE_INTEGER => {
            fixed(4)?;
            Value::Integer(i32::from_be_bytes(body.try_into()?))
        }
        TYPE_LONG_INTEGER => {
            fixed(8)?;
            Value::LongInteger(i64::from_be_bytes(body.try_into()?))
        }
        TYPE_ENUMERATION => {
            fixed(4)?;
            Value::Enumeration(u32::from_be_bytes(body.try_into()?))
        }
        TYPE_BOOLEAN => {
            fixed(8)?;
            Value::Boolean(u64::from_be_bytes(body.try_into()?) != 0)
        }
        TYPE_TEXT_STRING => Value::TextString(
            String::from_utf8(body.to_vec())
                .with_context(|| format!("TTLV text {tag:#08x} is not UTF-8"))?,
        ),
        TYPE_BYTE_STRING => Value::ByteString(body.to_vec()),
        TYPE_DATE_TIME => {
            fixed(8)?;
            Value::DateTime(i64::from_be_bytes(body.try_into()?))
        }
        TYPE_INTERVAL => {
            fixed(4)?;
            Value::Interval(u32::from_be_bytes(body.try_into()?))
        }
        other => Value::Other(other, body.to_vec()),
    };
    Ok((Item { tag, value }, start + padded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_spec_examples() {
        // KMIP 1.2 spec 9.1.2 examples.
        assert_eq!(
            Item::integer(0x420020, 8).encode(),
            hex::decode("42002002000000040000000800000000").unwrap()
        );
        assert_eq!(
            Item::text(0x420020, "Hello World").encode(),
            hex::decode("420020070000000B48656C6C6F20576F726C640000000000").unwrap()
        );
        assert_eq!(
            Item::bytes(0x420020, &[1, 2, 3]).encode(),
            hex::decode("42002008000000030102030000000000").unwrap()
        );
        let s = Item::structure(
            0x420020,
            vec![
                Item::enumeration(0x420004, 254),
                Item::integer(0x420005, 255),
            ],
        );
        assert_eq!(
            s.encode(),
            hex::decode(
                "42002001000000204200040500000004000000FE000000004200050200000004000000FF00000000"
            )
            .unwrap()
        );
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        let msg = Item::structure(
            0x420078,
            vec![
                Item::text(0x420094, "id-1"),
                Item::bytes(0x4200C2, &[9; 13]),
                Item::enumeration(0x42005C, 31),
            ],
        );
        let bytes = msg.encode();
        assert_eq!(Item::decode(&bytes).unwrap(), msg);
        assert!(Item::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Item::decode(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        let header: [u8; 8] = Item::text(0x420094, "fifteen bytes!!").encode()[..8]
            .try_into()
            .unwrap();
        assert_eq!(message_len(&header), 8 + 16);
        let mut bad_len = bytes.clone();
        bad_len[7] = 0xFF;
        assert!(Item::decode(&bad_len).is_err());
    }
}
