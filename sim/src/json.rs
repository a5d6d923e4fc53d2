//! A minimal JSON value and writer for the CLI's summaries.
//!
//! The simulator prints a handful of flat summaries; a dozen lines here avoid a serialization
//! framework in the dependency graph.

use core::fmt::{self, Write as _};

/// A JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A non-negative integer.
    U64(u64),
    /// A number (non-finite values print as `null`).
    F64(f64),
    /// A string.
    Str(String),
    /// An array.
    Arr(Vec<Json>),
    /// An object, keys in the given order.
    Obj(Vec<(String, Json)>),
}

impl Json {
    /// An object from `&str` keys.
    pub fn obj(fields: Vec<(&str, Json)>) -> Json {
        Json::Obj(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    fn write_indented(&self, out: &mut String, indent: usize) -> fmt::Result {
        let pad = |out: &mut String, n: usize| out.push_str(&"  ".repeat(n));
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => write!(out, "{b}")?,
            Json::U64(n) => write!(out, "{n}")?,
            Json::F64(x) if x.is_finite() => write!(out, "{x}")?,
            Json::F64(_) => out.push_str("null"),
            Json::Str(s) => write_str(out, s)?,
            Json::Arr(items) if items.is_empty() => out.push_str("[]"),
            Json::Arr(items) => {
                out.push_str("[\n");
                for (i, item) in items.iter().enumerate() {
                    pad(out, indent + 1);
                    item.write_indented(out, indent + 1)?;
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push(']');
            }
            Json::Obj(fields) if fields.is_empty() => out.push_str("{}"),
            Json::Obj(fields) => {
                out.push_str("{\n");
                for (i, (k, v)) in fields.iter().enumerate() {
                    pad(out, indent + 1);
                    write_str(out, k)?;
                    out.push_str(": ");
                    v.write_indented(out, indent + 1)?;
                    out.push_str(if i + 1 < fields.len() { ",\n" } else { "\n" });
                }
                pad(out, indent);
                out.push('}');
            }
        }
        Ok(())
    }

    /// Pretty-printed text.
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_indented(&mut out, 0);
        out
    }
}

fn write_str(out: &mut String, s: &str) -> fmt::Result {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32)?,
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_nests() {
        let j = Json::obj(vec![
            ("a", Json::Str("x\"y\n".into())),
            ("b", Json::Arr(vec![Json::U64(1), Json::Null])),
            ("c", Json::F64(f64::NAN)),
        ]);
        assert_eq!(
            j.pretty(),
            "{\n  \"a\": \"x\\\"y\\n\",\n  \"b\": [\n    1,\n    null\n  ],\n  \"c\": null\n}"
        );
    }
}
