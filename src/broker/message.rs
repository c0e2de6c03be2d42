//! An immutable message: routing info, the publisher's raw content-header properties, and the body.
//!
//! Properties are kept exactly as the publisher encoded them (flags + property list), so every
//! delivery copies them byte for byte into its content header: no decode/encode per delivery, and
//! every property and header table round-trips exactly. The few fields the broker itself needs
//! (delivery mode, priority, expiration, headers) are located once, when the header frame arrives.

use crate::broker::memory::MemoryMonitor;
use amq_protocol::protocol::basic::{gen_properties, parse_properties, AMQPProperties};
use bytes::Bytes;
use std::ops::Range;

/// A published message, shared (as `Arc<Message>`) by every queue it was routed to.
#[derive(Debug)]
pub struct Message {
    pub exchange: Bytes,
    pub routing_key: Small,
    pub properties: Properties,
    /// The body: a short one (as many bytes as fit in a `Small`) inside the message, a longer
    /// one shared (with the socket's read buffer it arrived in, or with other copies).
    pub body: Small,
    /// The broker's memory account, credited back when the message goes.
    memory: &'static MemoryMonitor,
    /// Its record in the message log, once stored (persistent, routed to durable queues).
    pub stored: std::sync::OnceLock<crate::store::Stored>,
}

impl Drop for Message {
    fn drop(&mut self) {
        self.memory.sub(self.accounted());
    }
}

impl Message {
    #[inline(always)]
    pub fn new(
        exchange: Bytes,
        routing_key: impl Into<Small>,
        properties: Properties,
        body: impl Into<Small>,
        memory: &'static MemoryMonitor,
    ) -> Self {
        let (routing_key, body) = (routing_key.into(), body.into());
        // Counted before the message is put together, so that it is built once, where it is
        // returned to (not on this frame's stack, then copied out).
        memory.add(accounted(&routing_key, &properties, &body));
        Message {
            exchange,
            routing_key,
            properties,
            body,
            memory,
            stored: std::sync::OnceLock::new(),
        }
    }

    /// The memory account this message is counted in.
    pub fn memory(&self) -> &'static MemoryMonitor {
        self.memory
    }

    /// The bytes this message is counted for: body, properties and routing key.
    fn accounted(&self) -> u64 {
        accounted(&self.routing_key, &self.properties, &self.body)
    }

    /// Whether the publisher asked for it to survive a restart (delivery_mode 2).
    pub fn persistent(&self) -> bool {
        self.properties.delivery_mode == Some(2)
    }

    /// Bytes of body, as counted by RabbitMQ's `message_bytes`.
    pub fn body_size(&self) -> usize {
        self.body.len()
    }
}

/// A short byte string (a routing key, a property block) kept inside its owner when it fits,
/// else shared. Taken off a socket's read buffer, a few bytes copied cost less than a reference
/// counted into the buffer: an atomic increment then, and a decrement when the message goes.
#[derive(Clone)]
pub enum Small {
    Inline { len: u8, buf: [u8; SMALL_INLINE] },
    Shared(Bytes),
}

/// The most bytes a `Small` holds inline (as many as fit beside a `Bytes`'s own niche: a
/// `Small` is no bigger than a `Bytes`).
pub const SMALL_INLINE: usize = 22;

impl Small {
    /// A copy of `b`: inline when it fits.
    pub fn copy(b: &[u8]) -> Small {
        if b.len() <= SMALL_INLINE {
            let mut buf = [0; SMALL_INLINE];
            buf[..b.len()].copy_from_slice(b);
            Small::Inline {
                len: b.len() as u8,
                buf,
            }
        } else {
            Small::Shared(Bytes::copy_from_slice(b))
        }
    }

    /// The first `len` bytes of `window` (`len <= SMALL_INLINE`), copied as one block of fixed
    /// size: no call to a copy routine, and no narrow stores that the wide reads moving the
    /// result on would stall on. The bytes past `len` are kept but never read.
    #[inline]
    pub fn prefix(window: &[u8; SMALL_INLINE], len: usize) -> Small {
        debug_assert!(len <= SMALL_INLINE);
        Small::Inline {
            len: len as u8,
            buf: *window,
        }
    }

    /// As a `Bytes` (a copy when inline: for the paths that send it elsewhere, not per delivery).
    pub fn bytes(&self) -> Bytes {
        match self {
            Small::Inline { .. } => Bytes::copy_from_slice(self),
            Small::Shared(b) => b.clone(),
        }
    }
}

impl From<Bytes> for Small {
    fn from(b: Bytes) -> Small {
        if b.len() <= SMALL_INLINE {
            Small::copy(&b)
        } else {
            Small::Shared(b)
        }
    }
}

impl Default for Small {
    fn default() -> Small {
        Small::Inline {
            len: 0,
            buf: [0; SMALL_INLINE],
        }
    }
}

impl std::ops::Deref for Small {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Small::Inline { len, buf } => &buf[..*len as usize],
            Small::Shared(b) => b,
        }
    }
}

impl std::fmt::Debug for Small {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&Bytes::copy_from_slice(self), f)
    }
}

impl PartialEq for Small {
    fn eq(&self, other: &Small) -> bool {
        self[..] == other[..]
    }
}

/// The raw property block of a content header (16-bit flags followed by the present fields).
#[derive(Debug, Clone, Default)]
pub struct Properties {
    pub raw: Small,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    expiration: Span,
    headers: Span,
    user_id: Span,
    reply_to: Span,
}

/// Where a property lies in `raw`, or nowhere: 8 bytes, where an `Option<Range<usize>>` takes
/// 24 (every message carries four). A property never starts at 0 (the flags come first), so
/// `0..0` is "absent".
#[derive(Debug, Clone, Copy, Default)]
struct Span(u32, u32);

impl Span {
    fn of(r: Range<usize>) -> Span {
        // A property block is within one frame (frame_max is a u32).
        Span(r.start as u32, r.end as u32)
    }

    fn get(self) -> Option<Range<usize>> {
        (self.0 != 0).then_some(self.0 as usize..self.1 as usize)
    }
}

/// Why a property block could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    #[error("content header property list truncated")]
    Truncated,
    #[error(
        "content header uses property flag continuation, which AMQP 0-9-1 basic does not define"
    )]
    Continuation,
    #[error("trailing bytes after content header properties")]
    Trailing,
}

// Property flags of class basic, most significant bit first.
const F_CONTENT_TYPE: u16 = 1 << 15;
const F_CONTENT_ENCODING: u16 = 1 << 14;
const F_HEADERS: u16 = 1 << 13;
const F_DELIVERY_MODE: u16 = 1 << 12;
const F_PRIORITY: u16 = 1 << 11;
const F_CORRELATION_ID: u16 = 1 << 10;
const F_REPLY_TO: u16 = 1 << 9;
const F_EXPIRATION: u16 = 1 << 8;
const F_MESSAGE_ID: u16 = 1 << 7;
const F_TIMESTAMP: u16 = 1 << 6;
const F_TYPE: u16 = 1 << 5;
const F_USER_ID: u16 = 1 << 4;
const F_APP_ID: u16 = 1 << 3;
const F_CLUSTER_ID: u16 = 1 << 2;

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<Range<usize>, PropertiesError> {
        let end = self.pos.checked_add(n).ok_or(PropertiesError::Truncated)?;
        if end > self.b.len() {
            return Err(PropertiesError::Truncated);
        }
        let r = self.pos..end;
        self.pos = end;
        Ok(r)
    }
    fn u8(&mut self) -> Result<u8, PropertiesError> {
        Ok(self.b[self.take(1)?.start])
    }
    fn shortstr(&mut self) -> Result<Range<usize>, PropertiesError> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    fn longstr(&mut self) -> Result<Range<usize>, PropertiesError> {
        let r = self.take(4)?;
        let n = u32::from_be_bytes(self.b[r].try_into().expect("4 bytes")) as usize;
        self.take(n)
    }
}

impl Properties {
    /// Locate the fields the broker needs. Checks the field lengths, not the contents of the
    /// header table (that is parsed only when a headers exchange or a feature needs it).
    #[inline]
    pub fn parse(raw: impl Into<Small>) -> Result<Self, PropertiesError> {
        let raw: Small = raw.into();
        let mut c = Cursor { b: &raw, pos: 0 };
        let fr = c.take(2)?;
        let flags = u16::from_be_bytes([raw[fr.start], raw[fr.start + 1]]);
        if flags & 1 != 0 {
            return Err(PropertiesError::Continuation);
        }
        let mut p = Properties::default();
        if flags & F_CONTENT_TYPE != 0 {
            c.shortstr()?;
        }
        if flags & F_CONTENT_ENCODING != 0 {
            c.shortstr()?;
        }
        if flags & F_HEADERS != 0 {
            let start = c.pos;
            c.longstr()?;
            p.headers = Span::of(start..c.pos);
        }
        if flags & F_DELIVERY_MODE != 0 {
            p.delivery_mode = Some(c.u8()?);
        }
        if flags & F_PRIORITY != 0 {
            p.priority = Some(c.u8()?);
        }
        if flags & F_CORRELATION_ID != 0 {
            c.shortstr()?;
        }
        if flags & F_REPLY_TO != 0 {
            p.reply_to = Span::of(c.shortstr()?);
        }
        if flags & F_EXPIRATION != 0 {
            p.expiration = Span::of(c.shortstr()?);
        }
        if flags & F_MESSAGE_ID != 0 {
            c.shortstr()?;
        }
        if flags & F_TIMESTAMP != 0 {
            c.take(8)?;
        }
        if flags & F_TYPE != 0 {
            c.shortstr()?;
        }
        if flags & F_USER_ID != 0 {
            p.user_id = Span::of(c.shortstr()?);
        }
        for f in [F_APP_ID, F_CLUSTER_ID] {
            if flags & f != 0 {
                c.shortstr()?;
            }
        }
        if c.pos != raw.len() {
            return Err(PropertiesError::Trailing);
        }
        p.raw = raw;
        Ok(p)
    }

    /// Decode every property (amq-protocol's form): only where the broker must change some
    /// (dead-lettering, direct reply-to, BCC), never on the plain publish/deliver path.
    pub fn decode(&self) -> Option<AMQPProperties> {
        parse_properties(&self.raw[..]).ok().map(|(_, p)| p)
    }

    /// Encode edited properties back into the raw form deliveries copy.
    pub fn encode(props: &AMQPProperties) -> Option<Properties> {
        let raw = cookie_factory::gen_simple(gen_properties(props), Vec::new()).ok()?;
        Properties::parse(Bytes::from(raw)).ok()
    }

    /// The `expiration` property as sent (milliseconds as a string), if present.
    pub fn expiration(&self) -> Option<&[u8]> {
        self.expiration.get().map(|r| &self.raw[r])
    }

    /// The per-message TTL from `expiration` (milliseconds as a decimal string), or the
    /// RabbitMQ reason it is invalid.
    #[inline]
    pub fn ttl_ms(&self) -> Result<Option<u64>, &'static str> {
        // Asked twice per message (the publish's checks, the queue's expiry): the usual
        // message has no `expiration`, known inline; one with it is read out of line.
        match self.expiration() {
            None => Ok(None),
            Some(e) => parse_ttl(e),
        }
    }

    /// The `reply-to` property, if present.
    pub fn reply_to(&self) -> Option<&[u8]> {
        self.reply_to.get().map(|r| &self.raw[r])
    }

    /// The `user-id` property, if present.
    pub fn user_id(&self) -> Option<&[u8]> {
        self.user_id.get().map(|r| &self.raw[r])
    }

    /// Write these properties to `out` with one more entry in the headers table (created when
    /// absent): `entry` is an encoded table entry (short-string name, type, value) whose name the
    /// table does not hold yet. No decoding: the bytes are spliced.
    pub fn with_header_entry(&self, entry: &[u8], out: &mut Vec<u8>) {
        let raw = &self.raw[..];
        if let Some(r) = self.headers.get() {
            let len = u32::from_be_bytes(raw[r.start..r.start + 4].try_into().expect("4 bytes"));
            out.extend_from_slice(&raw[..r.start]);
            out.extend_from_slice(&(len + entry.len() as u32).to_be_bytes());
            out.extend_from_slice(&raw[r.start + 4..r.end]);
            out.extend_from_slice(entry);
            out.extend_from_slice(&raw[r.end..]);
            return;
        }
        let flags = u16::from_be_bytes([raw[0], raw[1]]);
        // The table goes after content-type and content-encoding, the two fields before it.
        let mut at = 2;
        for f in [F_CONTENT_TYPE, F_CONTENT_ENCODING] {
            if flags & f != 0 {
                at += 1 + raw[at] as usize;
            }
        }
        out.extend_from_slice(&(flags | F_HEADERS).to_be_bytes());
        out.extend_from_slice(&raw[2..at]);
        out.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        out.extend_from_slice(entry);
        out.extend_from_slice(&raw[at..]);
    }

    /// Whether the headers table holds an entry named `name` (a cheap scan of the encoded
    /// table: a false positive is possible, a false negative not).
    pub fn may_have_header(&self, name: &str) -> bool {
        let Some(t) = self.headers_raw() else {
            return false;
        };
        let n = name.as_bytes();
        t.windows(n.len() + 1)
            .any(|w| w[0] as usize == n.len() && &w[1..] == n)
    }

    /// The encoded `headers` table (with its 4-byte length prefix), if present.
    pub fn headers_raw(&self) -> Option<&[u8]> {
        self.headers.get().map(|r| &self.raw[r])
    }
}

/// An `expiration` property's milliseconds, or the RabbitMQ reason it is invalid.
#[inline(never)]
fn parse_ttl(e: &[u8]) -> Result<Option<u64>, &'static str> {
    if e.first() == Some(&b'-') {
        return Err("value_negative");
    }
    if e.is_empty() || !e.iter().all(u8::is_ascii_digit) {
        return Err("no_integer");
    }
    std::str::from_utf8(e)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or("no_integer")
}

/// The bytes a message is counted for in the memory account: body, properties and routing key.
#[inline]
fn accounted(routing_key: &Small, properties: &Properties, body: &Small) -> u64 {
    (body.len() + properties.raw.len() + routing_key.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_keeps_short_bytes_inline_and_shares_the_rest() {
        // No bigger than the `Bytes` it replaces in every message.
        assert_eq!(std::mem::size_of::<Small>(), std::mem::size_of::<Bytes>());
        let buf = Bytes::from(vec![7u8; 64]);
        for n in [0, 1, SMALL_INLINE, SMALL_INLINE + 1, 64] {
            let part = buf.slice(..n);
            let s = Small::from(part.clone());
            assert_eq!(&s[..], &part[..], "{n} bytes");
            assert_eq!(
                matches!(s, Small::Inline { .. }),
                n <= SMALL_INLINE,
                "{n} bytes"
            );
            assert_eq!(s.bytes(), part);
            assert_eq!(Small::copy(&part), s);
            if n <= SMALL_INLINE {
                // Taken from a wider window: the same bytes, whatever follows them.
                let window = buf[..SMALL_INLINE].try_into().unwrap();
                assert_eq!(Small::prefix(window, n), s, "{n} bytes");
            }
        }
        // A shared one is the same buffer, not a copy.
        let Small::Shared(b) = Small::from(buf.clone()) else {
            panic!("64 bytes inline")
        };
        assert_eq!(b.as_ptr(), buf.as_ptr());
        // Properties parsed from a short block keep it inline.
        let p = Properties::parse(Bytes::from_static(&[0x10, 0, 2])).unwrap();
        assert!(matches!(p.raw, Small::Inline { len: 3, .. }));
        assert_eq!(p.delivery_mode, Some(2));
    }

    #[test]
    fn empty_properties() {
        let p = Properties::parse(Bytes::from_static(&[0, 0])).unwrap();
        assert_eq!(p.delivery_mode, None);
        assert!(p.headers_raw().is_none());
    }

    #[test]
    fn finds_fields() {
        // content-type "a", delivery-mode 2, priority 7, expiration "100"
        let flags = F_CONTENT_TYPE | F_DELIVERY_MODE | F_PRIORITY | F_EXPIRATION;
        let mut v = flags.to_be_bytes().to_vec();
        v.extend_from_slice(&[1, b'a', 2, 7, 3, b'1', b'0', b'0']);
        let p = Properties::parse(Bytes::from(v)).unwrap();
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.priority, Some(7));
        assert_eq!(p.expiration(), Some(&b"100"[..]));
    }

    #[test]
    fn header_entry_is_spliced_in_with_or_without_a_table() {
        use amq_protocol::types::{AMQPValue, FieldTable};
        let entry = {
            let mut e = vec![3, b'x', b'-', b'o', b'l'];
            e.extend_from_slice(&42i64.to_be_bytes());
            e
        };
        let check = |props: AMQPProperties| {
            let p = Properties::encode(&props).unwrap();
            let mut out = Vec::new();
            p.with_header_entry(&entry, &mut out);
            let back = Properties::parse(Bytes::from(out))
                .unwrap()
                .decode()
                .unwrap();
            let h = back.headers().clone().unwrap();
            assert_eq!(
                h.inner().get("x-o"),
                Some(&AMQPValue::LongLongInt(42)),
                "{props:?}"
            );
            assert_eq!(back.content_type(), props.content_type());
            assert_eq!(back.delivery_mode(), props.delivery_mode());
            assert_eq!(back.message_id(), props.message_id());
            if let Some(old) = props.headers() {
                for (k, v) in old.inner() {
                    assert_eq!(h.inner().get(k.as_str()), Some(v));
                }
            }
        };
        check(AMQPProperties::default());
        check(AMQPProperties::default().with_delivery_mode(2));
        check(
            AMQPProperties::default()
                .with_content_type("text/plain".into())
                .with_content_encoding("gzip".into())
                .with_message_id("m1".into()),
        );
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::LongString("b".into()));
        check(
            AMQPProperties::default()
                .with_content_type("c".into())
                .with_headers(t)
                .with_delivery_mode(1),
        );
    }

    #[test]
    fn rejects_truncated_and_trailing() {
        let flags = F_CONTENT_TYPE;
        let mut v = flags.to_be_bytes().to_vec();
        v.extend_from_slice(&[5, b'a']);
        assert!(matches!(
            Properties::parse(Bytes::from(v)),
            Err(PropertiesError::Truncated)
        ));
        assert!(matches!(
            Properties::parse(Bytes::from_static(&[0, 0, 1])),
            Err(PropertiesError::Trailing)
        ));
        let huge = [0x20, 0, 0xff, 0xff, 0xff, 0xff];
        assert!(Properties::parse(Bytes::copy_from_slice(&huge)).is_err());
    }
}
