//! Headers routing: a binding's arguments, typed once at bind time, matched against a message's
//! `headers` table with RabbitMQ's `x-match` rules (`all`, `any`, `all-with-x`, `any-with-x`).

use crate::broker::args::{as_int, str_bytes};
use crate::error::{AmqpError, AmqpResult};
use amq_protocol::types::{AMQPValue, FieldTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

/// A compiled headers binding.
#[derive(Debug, Clone)]
pub struct HeadersMatch {
    kind: MatchKind,
    /// (key, expected value; `Void` means "present, any value")
    pairs: Vec<(String, AMQPValue)>,
}

impl HeadersMatch {
    pub fn compile(args: &FieldTable) -> AmqpResult<Self> {
        let kind = match args.inner().get("x-match") {
            None => MatchKind::All,
            Some(AMQPValue::LongString(s)) => match_kind(s.as_bytes())?,
            Some(AMQPValue::ShortString(s)) => match_kind(s.as_str().as_bytes())?,
            Some(_) => {
                return Err(AmqpError::precondition(
                    "Invalid x-match field type; expected longstr",
                ))
            }
        };
        let with_x = matches!(kind, MatchKind::AllWithX | MatchKind::AnyWithX);
        let pairs = args
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != "x-match" && (with_x || !k.as_str().starts_with("x-")))
            .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
            .collect();
        Ok(HeadersMatch { kind, pairs })
    }

    pub fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let empty = FieldTable::default();
        let headers = headers.unwrap_or(&empty).inner();
        let one = |(k, v): &(String, AMQPValue)| match headers.get(k.as_str()) {
            None => false,
            Some(h) => matches!(v, AMQPValue::Void) || same_class_and_value(v, h),
        };
        match self.kind {
            MatchKind::All | MatchKind::AllWithX => self.pairs.iter().all(one),
            MatchKind::Any | MatchKind::AnyWithX => self.pairs.iter().any(one),
        }
    }
}

/// RabbitMQ compares a binding value with a header value by type class, then value: an integer
/// matches an integer of any width, a string a long or short string, a float a float or double.
fn same_class_and_value(a: &AMQPValue, b: &AMQPValue) -> bool {
    fn float(v: &AMQPValue) -> Option<f64> {
        match v {
            AMQPValue::Float(f) => Some(*f as f64),
            AMQPValue::Double(d) => Some(*d),
            _ => None,
        }
    }
    if let (Some(x), Some(y)) = (as_int(a), as_int(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (str_bytes(a), str_bytes(b)) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (float(a), float(b)) {
        return x == y;
    }
    a == b
}

fn match_kind(s: &[u8]) -> AmqpResult<MatchKind> {
    Ok(match s {
        b"all" => MatchKind::All,
        b"any" => MatchKind::Any,
        b"all-with-x" => MatchKind::AllWithX,
        b"any-with-x" => MatchKind::AnyWithX,
        other => {
            return Err(AmqpError::precondition(format!(
            "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
            String::from_utf8_lossy(other)
        )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::LongString;

    fn table(pairs: &[(&str, &str)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(
                (*k).into(),
                AMQPValue::LongString(LongString::from(v.as_bytes())),
            );
        }
        t
    }

    #[test]
    fn all_and_any() {
        let all = HeadersMatch::compile(&table(&[("a", "1"), ("b", "2")])).unwrap();
        let any =
            HeadersMatch::compile(&table(&[("x-match", "any"), ("a", "1"), ("b", "2")])).unwrap();
        let h1 = table(&[("a", "1")]);
        let h12 = table(&[("a", "1"), ("b", "2"), ("c", "3")]);
        assert!(!all.matches(Some(&h1)));
        assert!(all.matches(Some(&h12)));
        assert!(any.matches(Some(&h1)));
        assert!(!any.matches(None));
        assert!(!any.matches(Some(&table(&[("a", "2")]))));
    }

    #[test]
    fn x_keys_ignored_unless_with_x() {
        let all = HeadersMatch::compile(&table(&[("x-foo", "1")])).unwrap();
        assert!(all.matches(None), "x- keys are ignored by plain all");
        let allx =
            HeadersMatch::compile(&table(&[("x-match", "all-with-x"), ("x-foo", "1")])).unwrap();
        assert!(!allx.matches(None));
        assert!(allx.matches(Some(&table(&[("x-foo", "1")]))));
    }

    #[test]
    fn integers_match_across_widths_and_strings_across_kinds() {
        let mut b = FieldTable::default();
        b.insert("n".into(), AMQPValue::LongInt(5));
        b.insert("s".into(), AMQPValue::LongString(LongString::from("x")));
        let m = HeadersMatch::compile(&b).unwrap();
        let mut h = FieldTable::default();
        h.insert("n".into(), AMQPValue::ShortShortUInt(5));
        h.insert("s".into(), AMQPValue::ShortString("x".into()));
        assert!(m.matches(Some(&h)));
        h.insert("n".into(), AMQPValue::LongString(LongString::from("5")));
        assert!(!m.matches(Some(&h)), "a string is not an integer");
    }

    #[test]
    fn bad_x_match_is_refused() {
        let e = HeadersMatch::compile(&table(&[("x-match", "most")])).unwrap_err();
        assert_eq!(e.code, crate::error::code::PRECONDITION_FAILED);
    }
}
