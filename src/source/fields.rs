//! A JSON object of secret fields, deserialized straight into zeroizing strings. Shared by
//! the sources whose backends speak JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Write as _};

use secrecy::SecretString;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use zeroize::Zeroize;

use crate::secret::secret_string;

/// A JSON object of fields, deserialized straight into zeroizing strings.
///
/// Known gap: serde_json copies strings that contain escapes through an internal scratch
/// buffer that is freed without zeroizing (serde-rs/json#1093); unescaped strings are
/// borrowed from our zeroizing input buffer.
pub(crate) struct Fields(pub BTreeMap<String, SecretString>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let FieldValue(value) = map.next_value()?;
                    fields.insert(key, value);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

pub(crate) struct FieldValue(pub SecretString);

impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl ValueVisitor {
            fn display<E: de::Error>(v: impl fmt::Display) -> Result<FieldValue, E> {
                // Formatted on the stack, so even a numeric secret leaves no heap copy.
                let mut buf = [0u8; 64];
                let mut cursor = io::Cursor::new(&mut buf[..]);
                write!(cursor, "{v}").map_err(|_| E::custom("number too long"))?;
                let len = cursor.position() as usize;
                let text = std::str::from_utf8(&buf[..len]).map_err(|_| E::custom("not UTF-8"))?;
                let value = FieldValue(secret_string(text));
                buf.zeroize();
                Ok(value)
            }
        }
        impl Visitor<'_> for ValueVisitor {
            type Value = FieldValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldValue, E> {
                Ok(FieldValue(secret_string(v)))
            }
            fn visit_string<E: de::Error>(self, mut v: String) -> Result<FieldValue, E> {
                let value = FieldValue(secret_string(&v));
                v.zeroize();
                Ok(value)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FieldValue, E> {
                Self::display(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldValue, E> {
                Self::display(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FieldValue, E> {
                Self::display(v)
            }
            /// A number with a fraction or exponent, or an integer beyond 64 bits, reaches us
            /// only as an `f64`: its text is gone (`1.50` would come out as `1.5`, and
            /// `770000000000000000000051240` as `770000000000000000000000000` — found by the
            /// `source_answer` fuzz target). A value is passed on exactly or not at all.
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<FieldValue, E> {
                Err(E::custom(
                    "a number that is not a 64-bit integer cannot be passed on exactly; store it as a string",
                ))
            }
        }
        d.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::Fields;

    fn parse(json: &str) -> Result<Vec<(String, String)>, serde_json::Error> {
        let f: Fields = serde_json::from_str(json)?;
        Ok(f.0
            .iter()
            .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
            .collect())
    }

    #[test]
    fn values_are_passed_on_exactly_or_refused() {
        let got =
            parse(r#"{"i": -42, "u": 18446744073709551615, "b": true, "s": "x\u00e9"}"#).unwrap();
        let want = [
            ("b", "true"),
            ("i", "-42"),
            ("s", "xé"),
            ("u", "18446744073709551615"),
        ];
        assert_eq!(
            got,
            want.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec()
        );
        // Their text would change: refused, not altered.
        for altered in [
            r#"{"n": 1.50}"#,
            r#"{"n": 1e3}"#,
            r#"{"n": 770000000000000000000051240}"#,
        ] {
            assert!(parse(altered).is_err(), "{altered}");
        }
    }
}
