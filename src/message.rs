//! [`KafkaRecord`]: a Kafka record as the bridge keeps it and sends it.
//!
//! The webhook handler turns an event into a `KafkaRecord` once; the spool stores its
//! [encoding](KafkaRecord::encode) and the forwarder [reads](read_spooled) it and hands it to the
//! publisher as it is. Nothing after the handler parses the event's JSON again: the key, timestamp and
//! headers travel beside the value.
//!
//! ## Encoding (format version 2)
//! ```text
//! | 0x02 | received_at_ms: i64 LE | event_time_ms: i64 LE | timestamp_ms: i64 LE
//! | key_len: u16 LE | key | header_count: u8 | (name_len: u8 | name | value_len: u16 LE | value)*
//! | value: the rest |
//! ```
//! Version 1 records (written before this format) are the bare event JSON, which always starts with
//! `{`; [`read_spooled`] tells the two apart by the first byte and reads both. Hand-written rather
//! than serde + a binary codec: eight fixed fields, a format that must stay readable across versions,
//! and no dependency for ~60 lines with exhaustive tests.

/// A header name or value: the bridge's fixed names and values are borrowed, not allocated per record.
pub type Text = std::borrow::Cow<'static, str>;

/// The first byte of a version 2 encoding.
const V2: u8 = 0x02;
const FIXED: usize = 1 + 8 + 8 + 8 + 2;

/// A Kafka record with the two instants the bridge measures its delivery by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    /// The record key: every record of one key lands on one partition, in order.
    pub key: Vec<u8>,
    /// The record timestamp (ms since the epoch) the event asks for; the forwarder may replace it when
    /// the topic would refuse it (see `publisher::TopicLimits`).
    pub timestamp_ms: i64,
    /// Record headers, in order.
    pub headers: Vec<(Text, Text)>,
    /// The record value.
    pub value: Vec<u8>,
    /// When the bridge received the event (ms since the epoch): produce lag and delivery latency.
    pub received_at_ms: i64,
    /// When the event happened, by its source (ms since the epoch): event age.
    pub event_time_ms: i64,
}

/// Bytes that are not a message this version reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is empty")]
    Empty,
    #[error("record format version {0} is unknown to this version of the bridge")]
    UnknownVersion(u8),
    #[error("record is truncated or malformed ({0})")]
    Malformed(&'static str),
    #[error("version 1 record is not an event this version reads: {0}")]
    LegacyJson(String),
}

/// A field of a [`KafkaRecord`] too long for its length prefix in the encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {len} bytes; a spool record takes at most {max}")]
pub struct TooLong {
    /// Which field: `key`, `header count`, `header name …` or `header …`.
    pub field: String,
    pub len: usize,
    pub max: usize,
}

impl KafkaRecord {
    /// Whether every length-prefixed field fits its prefix, so that [`encode`](Self::encode) can write
    /// the message. The bridge's events always do (a GroupId is at most 64 bytes, every other header
    /// value is derived from bounded values); the webhook handler checks anyway, and refuses with 400
    /// what does not, so that no input can reach the panic.
    pub fn check(&self) -> Result<(), TooLong> {
        let fits = |field: &dyn Fn() -> String, len: usize, max: usize| {
            if len <= max {
                Ok(())
            } else {
                Err(TooLong { field: field(), len, max })
            }
        };
        let short = |s: &str| s.chars().take(32).collect::<String>();
        fits(&|| "key".into(), self.key.len(), u16::MAX as usize)?;
        fits(&|| "header count".into(), self.headers.len(), u8::MAX as usize)?;
        for (name, value) in &self.headers {
            fits(&|| format!("header name {}", short(name)), name.len(), u8::MAX as usize)?;
            fits(&|| format!("header {}", short(name)), value.len(), u16::MAX as usize)?;
        }
        Ok(())
    }

    /// Appends the encoding to `out`.
    ///
    /// # Panics
    /// When [`check`](Self::check) fails: the key over 64 KiB, a header name over 255 bytes, a header
    /// value over 64 KiB or more than 255 headers. What comes from a webhook is checked before.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(V2);
        out.extend_from_slice(&self.received_at_ms.to_le_bytes());
        out.extend_from_slice(&self.event_time_ms.to_le_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&u16::try_from(self.key.len()).expect("key under 64 KiB").to_le_bytes());
        out.extend_from_slice(&self.key);
        out.push(u8::try_from(self.headers.len()).expect("at most 255 headers"));
        for (name, value) in &self.headers {
            out.push(u8::try_from(name.len()).expect("header name under 256 bytes"));
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(
                &u16::try_from(value.len()).expect("header value under 64 KiB").to_le_bytes(),
            );
            out.extend_from_slice(value.as_bytes());
        }
        out.extend_from_slice(&self.value);
    }

    /// The encoding as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    fn encoded_len(&self) -> usize {
        FIXED
            + self.key.len()
            + 1
            + self.headers.iter().map(|(n, v)| 3 + n.len() + v.len()).sum::<usize>()
            + self.value.len()
    }

    /// Roughly what Kafka counts against `max.message.bytes` for this record alone in a batch:
    /// key, value and headers plus the batch and record framing (61 + at most 21 + 5 per header).
    pub fn kafka_size(&self) -> usize {
        61 + 21
            + self.key.len()
            + self.value.len()
            + self.headers.iter().map(|(n, v)| 10 + n.len() + v.len()).sum::<usize>()
    }

    /// [`read_spooled`] into an owned message (a quarantined record, the fuzz target's round trip;
    /// the forwarder reads without copying); on error the bytes come back with the reason.
    #[allow(clippy::result_large_err)]
    pub fn decode(
        bytes: Vec<u8>,
        legacy: impl FnOnce(&[u8]) -> Result<KafkaRecord, String>,
    ) -> Result<KafkaRecord, (DecodeError, Vec<u8>)> {
        let read = read_spooled(&bytes, legacy).map(|s| s.message().to_message());
        read.map_err(|e| (e, bytes))
    }

    /// The message, borrowed.
    pub fn as_ref(&self) -> KafkaRecordRef<'_> {
        KafkaRecordRef {
            key: &self.key,
            timestamp_ms: self.timestamp_ms,
            headers: Headers::Owned(&self.headers),
            value: &self.value,
            received_at_ms: self.received_at_ms,
            event_time_ms: self.event_time_ms,
        }
    }
}

/// A spooled record, read: borrowed from its version 2 encoding (nothing copied), or made from a
/// version 1 record (the bare event JSON) by the caller's reader of that format.
#[derive(Debug)]
pub enum Spooled<'a> {
    Current(KafkaRecordRef<'a>),
    Legacy(KafkaRecord),
}

impl Spooled<'_> {
    pub fn message(&self) -> KafkaRecordRef<'_> {
        match self {
            Spooled::Current(m) => *m,
            Spooled::Legacy(m) => m.as_ref(),
        }
    }
}

/// The one reader of spooled bytes, in either format: a version 2 encoding is borrowed, a version 1
/// record (first byte `{`) goes to `legacy` (the event module's reader: this module does not know the
/// event's JSON). A record neither reads is for the dead-letter topic, whole.
pub fn read_spooled<'a>(
    bytes: &'a [u8],
    legacy: impl FnOnce(&[u8]) -> Result<KafkaRecord, String>,
) -> Result<Spooled<'a>, DecodeError> {
    if bytes.first() == Some(&b'{') {
        return legacy(bytes).map(Spooled::Legacy).map_err(DecodeError::LegacyJson);
    }
    KafkaRecordRef::parse(bytes).map(Spooled::Current)
}

/// A message borrowed from its version 2 encoding (or from a [`KafkaRecord`]): what the forwarder hands
/// to the publisher, which copies key, headers and value into librdkafka once. Reading a spooled
/// record this way allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct KafkaRecordRef<'a> {
    pub key: &'a [u8],
    pub timestamp_ms: i64,
    headers: Headers<'a>,
    pub value: &'a [u8],
    pub received_at_ms: i64,
    pub event_time_ms: i64,
}

#[derive(Debug, Clone, Copy)]
enum Headers<'a> {
    /// The encoded header section (already checked: every length fits, every name and value is
    /// UTF-8) and how many headers it holds.
    Encoded(&'a [u8], u8),
    Owned(&'a [(Text, Text)]),
}

impl<'a> KafkaRecordRef<'a> {
    /// Reads a version 2 encoding (a version 1 record is for [`read_spooled`]).
    pub fn parse(bytes: &'a [u8]) -> Result<KafkaRecordRef<'a>, DecodeError> {
        match bytes.first() {
            None => return Err(DecodeError::Empty),
            Some(&V2) => {}
            Some(b'{') => return Err(DecodeError::LegacyJson("a version 1 record".into())),
            Some(&other) => return Err(DecodeError::UnknownVersion(other)),
        }
        let mut r = Cursor { bytes, at: 1 };
        let received_at_ms = r.i64()?;
        let event_time_ms = r.i64()?;
        let timestamp_ms = r.i64()?;
        let key_len = r.u16()? as usize;
        let key = r.take(key_len)?;
        let count = r.u8()?;
        let start = r.at;
        for _ in 0..count {
            let n = r.u8()? as usize;
            r.str(n)?;
            let v = r.u16()? as usize;
            r.str(v)?;
        }
        let headers = Headers::Encoded(&bytes[start..r.at], count);
        Ok(KafkaRecordRef {
            key,
            timestamp_ms,
            headers,
            value: &bytes[r.at..],
            received_at_ms,
            event_time_ms,
        })
    }

    /// The headers, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let (encoded, count, owned) = match self.headers {
            Headers::Encoded(bytes, count) => (bytes, count, &[][..]),
            Headers::Owned(list) => (&[][..], 0, list),
        };
        let mut r = Cursor { bytes: encoded, at: 0 };
        let decoded = (0..count).map(move |_| {
            // Checked by `parse`: these cannot fail.
            let n = r.u8().unwrap_or(0) as usize;
            let name = r.str(n).unwrap_or_default();
            let v = r.u16().unwrap_or(0) as usize;
            (name, r.str(v).unwrap_or_default())
        });
        decoded.chain(owned.iter().map(|(n, v)| (n.as_ref(), v.as_ref())))
    }

    /// An owned copy.
    pub fn to_message(&self) -> KafkaRecord {
        KafkaRecord {
            key: self.key.to_vec(),
            timestamp_ms: self.timestamp_ms,
            headers: self
                .headers()
                .map(|(n, v)| (Text::Owned(n.to_owned()), Text::Owned(v.to_owned())))
                .collect(),
            value: self.value.to_vec(),
            received_at_ms: self.received_at_ms,
            event_time_ms: self.event_time_ms,
        }
    }

    /// How many headers there are.
    pub fn header_count(&self) -> usize {
        match self.headers {
            Headers::Encoded(_, count) => count as usize,
            Headers::Owned(list) => list.len(),
        }
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Malformed("a field runs past the end"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn str(&mut self, n: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Malformed("a header is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KafkaRecord {
        KafkaRecord {
            key: b"@TGS#2J4SZEAEL".to_vec(),
            timestamp_ms: 1_670_574_414_123,
            headers: vec![("ce_id".into(), "abc".into()), ("content-type".into(), "application/json".into())],
            value: br#"{"schema_version":1}"#.to_vec(),
            received_at_ms: 1_795_746_701_870,
            event_time_ms: 1_670_574_414_123,
        }
    }

    fn no_legacy(_: &[u8]) -> Result<KafkaRecord, String> {
        Err("not expected".into())
    }

    #[test]
    fn a_message_round_trips() {
        let m = sample();
        let bytes = m.to_bytes();
        assert_eq!(bytes.len(), m.encoded_len());
        assert_eq!(KafkaRecord::decode(bytes, no_legacy).unwrap(), m);
    }

    #[test]
    fn the_borrowed_view_reads_what_the_owned_decode_reads() {
        let m = sample();
        let bytes = m.to_bytes();
        let view = KafkaRecordRef::parse(&bytes).unwrap();
        assert_eq!(view.to_message(), m);
        assert_eq!(view.header_count(), 2);
        assert_eq!(view.headers().collect::<Vec<_>>(), m.as_ref().headers().collect::<Vec<_>>());
        assert_eq!(view.value, &m.value[..]);
        assert!(matches!(KafkaRecordRef::parse(b"{}"), Err(DecodeError::LegacyJson(_))));
        let bad_utf8 = KafkaRecord { headers: vec![("n".into(), "\u{e9}".into())], ..sample() }.to_bytes();
        let at = bad_utf8.windows(2).position(|w| w == "\u{e9}".as_bytes()).unwrap();
        let mut broken = bad_utf8.clone();
        broken[at + 1] = 0xff;
        assert_eq!(
            KafkaRecordRef::parse(&broken).unwrap_err(),
            DecodeError::Malformed("a header is not UTF-8")
        );
    }

    #[test]
    fn a_field_too_long_for_its_length_prefix_is_named_by_check() {
        assert_eq!(sample().check(), Ok(()));
        let at_most = KafkaRecord { key: vec![b'k'; 65_535], ..sample() };
        assert_eq!(at_most.check(), Ok(()));
        KafkaRecord::decode(at_most.to_bytes(), no_legacy).unwrap();
        let key = KafkaRecord { key: vec![b'k'; 65_536], ..sample() };
        assert_eq!(key.check(), Err(TooLong { field: "key".into(), len: 65_536, max: 65_535 }));
        let value =
            KafkaRecord { headers: vec![("ce_subject".into(), "g".repeat(70_000).into())], ..sample() };
        assert_eq!(
            value.check().unwrap_err().to_string(),
            "header ce_subject is 70000 bytes; a spool record takes at most 65535"
        );
        let name = KafkaRecord { headers: vec![("n".repeat(256).into(), "v".into())], ..sample() };
        assert_eq!(name.check().unwrap_err().field, format!("header name {}", "n".repeat(32)));
        let many = KafkaRecord { headers: vec![("n".into(), "v".into()); 256], ..sample() };
        assert_eq!(many.check().unwrap_err().field, "header count");
    }

    #[test]
    fn an_empty_value_and_no_headers_round_trip() {
        let m = KafkaRecord { headers: vec![], value: vec![], ..sample() };
        assert_eq!(KafkaRecord::decode(m.to_bytes(), no_legacy).unwrap(), m);
    }

    #[test]
    fn a_version_1_record_goes_to_the_legacy_reader() {
        let legacy = |b: &[u8]| {
            assert_eq!(b, b"{\"a\":1}");
            Ok(sample())
        };
        assert_eq!(KafkaRecord::decode(b"{\"a\":1}".to_vec(), legacy).unwrap(), sample());
        let refused = KafkaRecord::decode(b"{}".to_vec(), |_| Err("unknown field".into()));
        assert_eq!(refused, Err((DecodeError::LegacyJson("unknown field".into()), b"{}".to_vec())));
    }

    #[test]
    fn every_truncation_is_refused_and_never_panics() {
        let bytes = sample().to_bytes();
        let header_end = bytes.len() - sample().value.len();
        for cut in 1..header_end {
            let r = KafkaRecord::decode(bytes[..cut].to_vec(), no_legacy);
            assert!(
                matches!(&r, Err((DecodeError::Malformed(_), b)) if b == &bytes[..cut]),
                "cut at {cut}: {r:?}"
            );
        }
        assert_eq!(KafkaRecord::decode(vec![], no_legacy), Err((DecodeError::Empty, vec![])));
        let unknown = KafkaRecord::decode(vec![9, 1, 2], no_legacy);
        assert_eq!(unknown, Err((DecodeError::UnknownVersion(9), vec![9, 1, 2])));
    }
}
