//! Table names as the `tables` setting writes them, parsed like Postgres parses
//! identifiers: `schema.table`, `"Quoted"` names, a bare name in `public`, `schema.*`.

use std::fmt;
use std::str::FromStr;

use super::{DEFAULT_SCHEMA, MAX_IDENTIFIER_BYTES};
use crate::sql::quote_ident;

/// A schema-qualified table name, as Postgres stores it (case preserved, unquoted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableName {
    /// The schema (`nspname`).
    pub schema: String,
    /// The table (`relname`).
    pub name: String,
}

impl TableName {
    /// A table name from its two parts.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> TableName {
        TableName {
            schema: schema.into(),
            name: name.into(),
        }
    }

    /// Both parts double-quoted for SQL: `"public"."Order"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// `schema.name`, quoting a part only where Postgres would need it (`public."My Table"`).
impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            display_ident(&self.schema),
            display_ident(&self.name)
        )
    }
}

/// One entry of `tables`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TablePattern {
    /// One table.
    Exact(TableName),
    /// Every table of a schema (`public.*`): those found at start, and tables created
    /// later, found every `source.table_discovery_interval`.
    AllInSchema(String),
}

impl fmt::Display for TablePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TablePattern::Exact(table) => table.fmt(f),
            TablePattern::AllInSchema(schema) => write!(f, "{}.*", display_ident(schema)),
        }
    }
}

/// Why a `tables` entry did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TableNameError(String);

/// Parses like Postgres: unquoted identifiers fold to lower case, `"Quoted"` ones keep
/// their case (and `""` for a quote); a bare name is in `public`; `schema.*` is every
/// table of the schema.
impl FromStr for TablePattern {
    type Err = TableNameError;

    fn from_str(input: &str) -> Result<TablePattern, TableNameError> {
        let mut rest = input.trim();
        if rest.is_empty() {
            return Err(TableNameError("it is empty".to_owned()));
        }
        let mut parts = Vec::new();
        loop {
            let (part, after) = next_name_part(rest)?;
            parts.push(part);
            if after.is_empty() {
                break;
            }
            rest = after.strip_prefix('.').ok_or_else(|| {
                TableNameError(format!(
                    "unexpected {after:?} after a name (quote names with special characters)"
                ))
            })?;
        }
        match parts.as_slice() {
            [NamePart::Ident(name)] => Ok(TablePattern::Exact(TableName::new(DEFAULT_SCHEMA, name.clone()))),
            [NamePart::Ident(schema), NamePart::Ident(name)] => {
                Ok(TablePattern::Exact(TableName::new(schema.clone(), name.clone())))
            }
            [NamePart::Ident(schema), NamePart::Star] => Ok(TablePattern::AllInSchema(schema.clone())),
            [NamePart::Star] => Err(TableNameError(
                "a bare * is not allowed (write schema.*, e.g. public.*)".to_owned(),
            )),
            [_, _] => Err(TableNameError("only the table part may be *, as in public.*".to_owned())),
            _ => Err(TableNameError(
                "it has more than two parts (write schema.table; the database comes from source.url)".to_owned(),
            )),
        }
    }
}

enum NamePart {
    Ident(String),
    Star,
}

/// Reads one identifier (or `*`) from the front of `s`; returns it and the rest.
fn next_name_part(s: &str) -> Result<(NamePart, &str), TableNameError> {
    if let Some(mut rest) = s.strip_prefix('"') {
        let mut ident = String::new();
        loop {
            let Some(quote) = rest.find('"') else {
                return Err(TableNameError("a quoted name is not closed".to_owned()));
            };
            ident.push_str(&rest[..quote]);
            let after = &rest[quote + 1..];
            match after.strip_prefix('"') {
                Some(more) => {
                    ident.push('"');
                    rest = more;
                }
                None => {
                    check_ident_len(&ident)?;
                    if ident.is_empty() {
                        return Err(TableNameError("a quoted name is empty".to_owned()));
                    }
                    return Ok((NamePart::Ident(ident), after));
                }
            }
        }
    }
    let end = s.find('.').unwrap_or(s.len());
    let (raw, after) = s.split_at(end);
    if raw == "*" {
        return Ok((NamePart::Star, after));
    }
    let mut chars = raw.chars();
    let plain = chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    if !plain {
        return Err(TableNameError(if raw.is_empty() {
            "a name part is empty".to_owned()
        } else {
            format!("{raw:?} is not a plain identifier (quote it, e.g. '\"{raw}\"')")
        }));
    }
    // Postgres folds unquoted identifiers to lower case (ASCII only, as in UTF-8 databases).
    let ident = raw.to_ascii_lowercase();
    check_ident_len(&ident)?;
    Ok((NamePart::Ident(ident), after))
}

fn check_ident_len(ident: &str) -> Result<(), TableNameError> {
    if ident.len() > MAX_IDENTIFIER_BYTES {
        return Err(TableNameError(format!(
            "{ident:?} is longer than {MAX_IDENTIFIER_BYTES} bytes, which Postgres would truncate"
        )));
    }
    Ok(())
}

/// The identifier as written in SQL: bare when that reads back the same, else quoted.
fn display_ident(ident: &str) -> String {
    let mut chars = ident.chars();
    let bare = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if bare {
        ident.to_owned()
    } else {
        quote_ident(ident)
    }
}
