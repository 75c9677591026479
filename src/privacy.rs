//! Column policies for personal data: what of a column's values may reach the lake.
//!
//! ```text
//!  privacy.columns (pattern → policy) ─► ColumnPolicies::policy(schema, table, column)
//!                                              │
//!        exclude ─► not selected by the initial load (NULL in its place), not a lake column
//!        null    ─► not selected; the lake column (own type) holds nulls only
//!        hash    ─► lowercase hex HMAC-SHA-256 of the Postgres text form  ┐ lake type string,
//!        mask(n) ─► `*` for every character but the last n              ├ applied by the batch
//!        truncate(n) ─► the first n characters                          ┘ builder to every row
//!        clear   ─► as is (the default; set it to say a column was reviewed)
//! ```
//!
//! Invariants:
//! - One function decides a column's policy ([`ColumnPolicies::policy`]) and one applies it
//!   ([`Protection::apply`]); the initial load, streaming (new rows, before-images, key
//!   columns) and `verify` all go through the batch builder, so they cannot differ.
//! - The policy of every column is recorded in the lake table (property
//!   [`POLICIES_PROPERTY`], and the hash key's id in [`HASH_KEY_ID_PROPERTY`]); a column
//!   whose configured policy differs from the recorded one, or a hashed table whose key
//!   changed, is refused ([`check_unchanged`]): clear and protected values never mix in
//!   one column.
//! - The hash key comes from an environment variable or a file, never from the YAML, and
//!   is never printed ([`HashKey`]'s `Debug` shows only its id).
//! - A pattern names `schema.table.column`, each part a name or `*`; a bare name means
//!   `*.*.name`. The most specific match wins (more named parts); two equally specific
//!   matches with different policies are an error, not a guess.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ring::hmac;

/// The lake table property holding each protected column's policy, a JSON object
/// `{"email": "hash", "notes": "exclude"}` (columns kept in clear are not listed).
pub const POLICIES_PROPERTY: &str = "pg2lake.privacy.policies";
/// The lake table property holding the id of the key hashed columns were hashed with.
pub const HASH_KEY_ID_PROPERTY: &str = "pg2lake.privacy.hashKeyId";
/// The lake table property listing the columns whose files carry no min/max statistics,
/// a JSON array; every writer of the table (streaming, compaction, the mirror) reads it.
pub const NO_STATISTICS_PROPERTY: &str = "pg2lake.privacy.noStatistics";
/// The properties above: what a table derived from a change log (its current-state
/// mirror) copies from it.
pub const TABLE_PROPERTIES: [&str; 3] = [
    POLICIES_PROPERTY,
    HASH_KEY_ID_PROPERTY,
    NO_STATISTICS_PROPERTY,
];
/// The default environment variable holding the hash key.
pub const DEFAULT_HASH_KEY_ENV: &str = "PG2LAKE_HASH_KEY";
/// Shortest hash key accepted: a short key lets anyone who guesses it reverse the hashes
/// of low-entropy values (phone numbers, tax ids) by trying them all.
pub const MIN_HASH_KEY_BYTES: usize = 16;
/// What the key id is the HMAC of.
const KEY_ID_MESSAGE: &[u8] = b"pg2lake hash key id";

/// What may reach the lake of one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Values as they are.
    #[default]
    Clear,
    /// The column never leaves Postgres and is not a lake column.
    Exclude,
    /// The lake column exists, with the column's own type, and holds only nulls.
    Null,
    /// HMAC-SHA-256 of the value's Postgres text form, lowercase hex (64 characters).
    Hash,
    /// Every character but the last `n` replaced by `*`; a value of `n` characters or
    /// fewer is masked whole, so a short value never appears in clear.
    Mask(u32),
    /// The first `n` characters.
    Truncate(u32),
}

impl Policy {
    /// Whether the lake column holds the text the policy makes rather than the column's
    /// own type (lake type string).
    pub fn rewrites_values(self) -> bool {
        matches!(self, Policy::Hash | Policy::Mask(_) | Policy::Truncate(_))
    }

    /// Whether the initial load selects the column at all.
    pub fn selected(self) -> bool {
        !matches!(self, Policy::Exclude | Policy::Null)
    }

    /// Whether a key column may have this policy: only a hash keeps distinct keys
    /// distinct, which folds and the current-state table need.
    pub fn keeps_keys_distinct(self) -> bool {
        matches!(self, Policy::Clear | Policy::Hash)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Clear => f.write_str("clear"),
            Policy::Exclude => f.write_str("exclude"),
            Policy::Null => f.write_str("null"),
            Policy::Hash => f.write_str("hash"),
            Policy::Mask(n) => write!(f, "mask({n})"),
            Policy::Truncate(n) => write!(f, "truncate({n})"),
        }
    }
}

impl FromStr for Policy {
    type Err = String;

    /// `clear`, `exclude`, `null`, `hash`, `mask(N)`, `truncate(N)` (case and spaces
    /// ignored).
    fn from_str(text: &str) -> Result<Policy, String> {
        let compact: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        let count = |inner: &str| -> Option<u32> { inner.parse().ok().filter(|&n| n > 0) };
        let parsed = match compact.as_str() {
            "clear" => Some(Policy::Clear),
            "exclude" => Some(Policy::Exclude),
            "null" => Some(Policy::Null),
            "hash" => Some(Policy::Hash),
            other => {
                if let Some(inner) = other
                    .strip_prefix("mask(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    count(inner).map(Policy::Mask)
                } else if let Some(inner) = other
                    .strip_prefix("truncate(")
                    .and_then(|r| r.strip_suffix(')'))
                {
                    count(inner).map(Policy::Truncate)
                } else {
                    None
                }
            }
        };
        parsed.ok_or_else(|| {
            format!(
                "{text:?} is not a policy: use exclude, null, hash, mask(N) (keep the last N characters), truncate(N) (keep the first N) or clear, with N > 0"
            )
        })
    }
}

/// The HMAC-SHA-256 key of `hash` policies. Its `Debug` shows only its id.
#[derive(Clone)]
pub struct HashKey {
    key: hmac::Key,
    id: String,
}

impl HashKey {
    /// A key from its bytes; refused when shorter than [`MIN_HASH_KEY_BYTES`].
    pub fn new(bytes: &[u8]) -> Result<HashKey, String> {
        if bytes.len() < MIN_HASH_KEY_BYTES {
            return Err(format!(
                "the hash key has {} bytes; at least {MIN_HASH_KEY_BYTES} are needed (fix: generate one with `openssl rand -hex 32`)",
                bytes.len()
            ));
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, bytes);
        let mut id = lower_hex(hmac::sign(&key, KEY_ID_MESSAGE).as_ref());
        id.truncate(16);
        Ok(HashKey { key, id })
    }

    /// A public name of the key (the first 16 hex digits of the HMAC of a fixed text):
    /// tells whether two tables were hashed with the same key without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lowercase hex HMAC-SHA-256 of `value`, appended to `out`.
    pub fn hash_into(&self, value: &[u8], out: &mut Vec<u8>) {
        push_hex(hmac::sign(&self.key, value).as_ref(), out);
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HashKey({})", self.id)
    }
}

impl PartialEq for HashKey {
    fn eq(&self, other: &HashKey) -> bool {
        self.id == other.id
    }
}

impl Eq for HashKey {}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` to `out` as lowercase hex.
fn push_hex(bytes: &[u8], out: &mut Vec<u8>) {
    for byte in bytes {
        out.push(HEX[usize::from(byte >> 4)]);
        out.push(HEX[usize::from(byte & 0x0f)]);
    }
}

fn lower_hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// What the batch builder does to each value of a column whose policy rewrites values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// [`Policy::Hash`] with its key.
    Hash(HashKey),
    /// [`Policy::Mask`].
    Mask(u32),
    /// [`Policy::Truncate`].
    Truncate(u32),
}

impl Protection {
    /// The protected form of `value` (a Postgres text form, UTF-8), written into `out`
    /// (cleared first).
    pub fn apply(&self, value: &[u8], out: &mut Vec<u8>) {
        out.clear();
        match self {
            Protection::Hash(key) => key.hash_into(value, out),
            Protection::Mask(keep) => {
                let text = String::from_utf8_lossy(value);
                let count = text.chars().count();
                let keep = usize::try_from(*keep).unwrap_or(usize::MAX);
                let masked = if count <= keep { count } else { count - keep };
                out.extend(std::iter::repeat_n(b'*', masked));
                for c in text.chars().skip(masked) {
                    let mut buffer = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                }
            }
            Protection::Truncate(keep) => {
                let text = String::from_utf8_lossy(value);
                let keep = usize::try_from(*keep).unwrap_or(usize::MAX);
                let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
                out.extend_from_slice(&text.as_bytes()[..end]);
            }
        }
    }
}

/// One `privacy.columns` key: `schema.table.column`, each part a name or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    parts: [Option<String>; 3],
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let pieces: Vec<&str> = text.split('.').collect();
        let pieces: Vec<&str> = match pieces.as_slice() {
            [column] => vec!["*", "*", column],
            [_, _, _] => pieces,
            _ => {
                return Err(format!(
                    "{text:?} must be schema.table.column (each part a name or *), or a bare column name for every table"
                ));
            }
        };
        if pieces.iter().any(|p| p.is_empty()) {
            return Err(format!("{text:?} has an empty part"));
        }
        let part = |p: &str| (p != "*").then(|| p.to_owned());
        Ok(Pattern {
            text: text.to_owned(),
            parts: [part(pieces[0]), part(pieces[1]), part(pieces[2])],
        })
    }

    /// How many parts it names, when it matches; `None` when it does not.
    fn specificity(&self, schema: &str, table: &str, column: &str) -> Option<usize> {
        let mut named = 0;
        for (part, name) in self.parts.iter().zip([schema, table, column]) {
            match part {
                Some(part) if part != name => return None,
                Some(_) => named += 1,
                None => {}
            }
        }
        Some(named)
    }
}

/// Why a column's policy cannot be decided or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Two equally specific patterns give one column different policies.
    #[error(
        "privacy.columns gives {column} two policies: {first:?} says {first_policy}, {second:?} says {second_policy} (fix: add an entry for the column itself, \"{column}\": <policy>)"
    )]
    Ambiguous {
        /// `schema.table.column`.
        column: String,
        /// The first pattern.
        first: String,
        /// Its policy.
        first_policy: Policy,
        /// The second pattern.
        second: String,
        /// Its policy.
        second_policy: Policy,
    },
    /// A key column with a policy that merges distinct keys.
    #[error(
        "privacy.columns gives key column {column} the policy {policy}, which would make distinct rows share a key (fix: hash it, or keep it in clear)"
    )]
    KeyColumn {
        /// `schema.table.column`.
        column: String,
        /// The policy.
        policy: Policy,
    },
    /// A hashed column and no key.
    #[error(
        "privacy.columns hashes {column} but no hash key is set (fix: set the environment variable {env}, or privacy.hash_key_file, to a secret of at least {MIN_HASH_KEY_BYTES} bytes)"
    )]
    NoKey {
        /// `schema.table.column`.
        column: String,
        /// The environment variable looked at.
        env: String,
    },
    /// The configured policy of a column differs from the one its lake values have.
    #[error(
        "table {table} column {column} was written to the lake with policy {recorded} and privacy.columns now says {configured}; pg2lake never mixes values of two policies in one column (fix: set the policy back to {recorded}, or move the table's lake folder away so that it is loaded again with the new policy, then erase what must go with `pg2lake forget`)"
    )]
    Changed {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
        /// The policy its lake values have.
        recorded: Policy,
        /// The policy configured now.
        configured: Policy,
    },
    /// The hash key differs from the one the table's hashed columns were written with.
    #[error(
        "table {table} has hashed columns written with hash key {recorded}, but the key configured now is {configured}: the same value would get another hash (fix: set the key back; a new key needs a new lake table)"
    )]
    KeyChanged {
        /// `schema.table`.
        table: String,
        /// The recorded key id.
        recorded: String,
        /// The configured key id.
        configured: String,
    },
}

/// The configured policies, ready to be asked per column.
#[derive(Debug, Clone, Default)]
pub struct ColumnPolicies {
    rules: Vec<(Pattern, Policy)>,
    no_statistics: Vec<Pattern>,
    key: Option<HashKey>,
    key_env: String,
}

impl ColumnPolicies {
    /// Parses `privacy.columns` entries and `privacy.no_statistics` patterns; an error
    /// names the entry.
    pub fn parse<'a>(
        columns: impl IntoIterator<Item = (&'a String, &'a String)>,
        no_statistics: &[String],
    ) -> Result<ColumnPolicies, (String, String)> {
        let mut rules = Vec::new();
        for (pattern, policy) in columns {
            let field = format!("privacy.columns.{pattern}");
            let parsed =
                Pattern::parse(pattern).map_err(|e| (field.clone(), format!("{field}: {e}")))?;
            let policy: Policy = policy
                .parse()
                .map_err(|e| (field.clone(), format!("{field}: {e}")))?;
            rules.push((parsed, policy));
        }
        let no_statistics = no_statistics
            .iter()
            .map(|p| {
                Pattern::parse(p).map_err(|e| {
                    let field = "privacy.no_statistics".to_owned();
                    let message = format!("{field}: {e}");
                    (field, message)
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ColumnPolicies {
            rules,
            no_statistics,
            key: None,
            key_env: DEFAULT_HASH_KEY_ENV.to_owned(),
        })
    }

    /// The same policies with the hash key (`env` is named in the error when a hashed
    /// column has none).
    pub fn with_key(mut self, key: Option<HashKey>, env: &str) -> ColumnPolicies {
        self.key = key;
        env.clone_into(&mut self.key_env);
        self
    }

    /// Whether any entry hashes.
    pub fn hashes(&self) -> bool {
        self.rules.iter().any(|(_, p)| *p == Policy::Hash)
    }

    /// The hash key, when one is configured.
    pub fn key(&self) -> Option<&HashKey> {
        self.key.as_ref()
    }

    /// The policy of `schema.table.column`: the most specific matching entry's, else
    /// [`Policy::Clear`].
    pub fn policy(&self, schema: &str, table: &str, column: &str) -> Result<Policy, PolicyError> {
        let mut best: Option<(usize, &Pattern, Policy)> = None;
        for (pattern, policy) in &self.rules {
            let Some(named) = pattern.specificity(schema, table, column) else {
                continue;
            };
            match best {
                Some((seen, _, _)) if seen > named => {}
                Some((seen, first, first_policy)) if seen == named && first_policy != *policy => {
                    return Err(PolicyError::Ambiguous {
                        column: format!("{schema}.{table}.{column}"),
                        first: first.text.clone(),
                        first_policy,
                        second: pattern.text.clone(),
                        second_policy: *policy,
                    });
                }
                Some((seen, _, _)) if seen == named => {}
                _ => best = Some((named, pattern, *policy)),
            }
        }
        Ok(best.map_or(Policy::Clear, |(_, _, policy)| policy))
    }

    /// Whether some `privacy.columns` entry names the column (a `clear` entry too).
    pub fn names(&self, schema: &str, table: &str, column: &str) -> bool {
        self.rules
            .iter()
            .any(|(p, _)| p.specificity(schema, table, column).is_some())
    }

    /// What the batch builder applies to a column with `policy` (`None` for policies
    /// that keep or drop values whole); errors when a hashed column has no key.
    pub fn protection(
        &self,
        column: &str,
        policy: Policy,
    ) -> Result<Option<Protection>, PolicyError> {
        Ok(match policy {
            Policy::Hash => Some(Protection::Hash(self.key.clone().ok_or_else(|| {
                PolicyError::NoKey {
                    column: column.to_owned(),
                    env: self.key_env.clone(),
                }
            })?)),
            Policy::Mask(n) => Some(Protection::Mask(n)),
            Policy::Truncate(n) => Some(Protection::Truncate(n)),
            Policy::Clear | Policy::Exclude | Policy::Null => None,
        })
    }

    /// Whether the column's Parquet and Delta statistics (min/max) are written.
    pub fn statistics(&self, schema: &str, table: &str, column: &str) -> bool {
        !self
            .no_statistics
            .iter()
            .any(|p| p.specificity(schema, table, column).is_some())
    }
}

/// The recorded form of a table's policies after the source's columns got `current`
/// policies: `recorded` (the property as it is) with those columns' entries replaced;
/// columns the source no longer has keep theirs. Protected columns only, by name;
/// `None` when nothing is protected and nothing was recorded (no property needed).
pub fn merge_recorded<'a>(
    recorded: Option<&str>,
    current: impl IntoIterator<Item = (&'a str, Policy)>,
) -> Option<String> {
    let mut map = parse_recorded(recorded);
    for (column, policy) in current {
        if policy == Policy::Clear {
            map.remove(column);
        } else {
            map.insert(column.to_owned(), policy);
        }
    }
    if map.is_empty() && recorded.is_none() {
        return None;
    }
    let printed: BTreeMap<&str, String> = map
        .iter()
        .map(|(c, p)| (c.as_str(), p.to_string()))
        .collect();
    Some(serde_json::to_string(&printed).unwrap_or_default())
}

/// Parses [`NO_STATISTICS_PROPERTY`]: the columns without statistics.
pub fn parse_no_statistics(property: Option<&str>) -> Vec<String> {
    property
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default()
}

/// Parses [`POLICIES_PROPERTY`]; an absent or unreadable property is an empty map (every
/// column in clear, what tables written before policies existed hold).
pub fn parse_recorded(property: Option<&str>) -> BTreeMap<String, Policy> {
    let map: BTreeMap<String, String> = property
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_default();
    map.into_iter()
        .filter_map(|(column, policy)| Some((column, policy.parse().ok()?)))
        .collect()
}

/// Refuses a policy change: every column the lake holds values of (`lake_columns`, and
/// recorded excluded ones) must keep its recorded policy (clear when not recorded) in
/// `configured` (the policies of the columns the source has now). A hashed table must
/// keep its key.
pub fn check_unchanged(
    table: &str,
    recorded: &BTreeMap<String, Policy>,
    recorded_key: Option<&str>,
    lake_columns: &[&str],
    configured: &BTreeMap<String, Policy>,
    key: Option<&HashKey>,
) -> Result<(), PolicyError> {
    for (column, &now) in configured {
        let before = match recorded.get(column) {
            Some(&before) => before,
            None if lake_columns.contains(&column.as_str()) => Policy::Clear,
            // A column the lake has never seen: it starts with its policy.
            None => continue,
        };
        if before != now {
            return Err(PolicyError::Changed {
                table: table.to_owned(),
                column: column.clone(),
                recorded: before,
                configured: now,
            });
        }
    }
    let hashed = recorded.values().any(|p| *p == Policy::Hash);
    if let (true, Some(recorded), Some(key)) = (hashed, recorded_key, key)
        && recorded != key.id()
    {
        return Err(PolicyError::KeyChanged {
            table: table.to_owned(),
            recorded: recorded.to_owned(),
            configured: key.id().to_owned(),
        });
    }
    Ok(())
}

/// Words that make a column name look personal (compared with the name's words, split on
/// `_`, `-`, digits and case changes).
const PERSONAL_WORDS: &[&str] = &[
    "name",
    "nome",
    "surname",
    "email",
    "mail",
    "phone",
    "telefone",
    "celular",
    "mobile",
    "cpf",
    "rg",
    "ssn",
    "passport",
    "address",
    "endereco",
    "street",
    "rua",
    "zip",
    "cep",
    "postcode",
    "birth",
    "birthday",
    "birthdate",
    "dob",
    "nascimento",
    "iban",
    "ip",
];
/// Fragments that make a name look personal wherever they appear (`useremail`).
const PERSONAL_FRAGMENTS: &[&str] = &["email", "phone", "birth", "cpf", "ssn", "address"];

/// Whether a column's name looks like it holds personal data (`email`, `phone`, `cpf`,
/// `ssn`, `name`, `address`, `birth`…): `check` warns about such columns without a policy.
pub fn looks_personal(column: &str) -> bool {
    let lower = column.to_ascii_lowercase();
    if PERSONAL_FRAGMENTS.iter().any(|f| lower.contains(f)) {
        return true;
    }
    words(column).any(|w| PERSONAL_WORDS.contains(&w.as_str()))
}

fn words(name: &str) -> impl Iterator<Item = String> + '_ {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        let boundary = !c.is_alphabetic() || (c.is_uppercase() && previous_lower);
        if boundary && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        if c.is_alphabetic() {
            current.extend(c.to_lowercase());
        }
        previous_lower = c.is_lowercase();
    }
    if !current.is_empty() {
        words.push(current);
    }
    words.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(entries: &[(&str, &str)]) -> ColumnPolicies {
        let map: BTreeMap<String, String> = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ColumnPolicies::parse(&map, &[]).expect("valid policies")
    }

    #[test]
    fn policies_parse_and_print_one_form() {
        for (text, policy) in [
            ("hash", Policy::Hash),
            (" Mask( 4 ) ", Policy::Mask(4)),
            ("truncate(1)", Policy::Truncate(1)),
            ("EXCLUDE", Policy::Exclude),
            ("null", Policy::Null),
            ("clear", Policy::Clear),
        ] {
            assert_eq!(text.parse::<Policy>(), Ok(policy));
            assert_eq!(policy.to_string().parse::<Policy>(), Ok(policy));
        }
        for bad in ["mask(0)", "mask", "truncate(-1)", "sha256", ""] {
            let error = bad.parse::<Policy>().expect_err(bad);
            assert!(error.contains("mask(N)"), "{error}");
        }
    }

    #[test]
    fn the_most_specific_pattern_wins_and_equal_ones_must_agree() {
        let p = policies(&[
            ("email", "hash"),
            ("public.users.email", "mask(3)"),
            ("public.*.phone", "truncate(2)"),
            ("*.users.phone", "null"),
        ]);
        assert_eq!(p.policy("sales", "leads", "email"), Ok(Policy::Hash));
        assert_eq!(p.policy("public", "users", "email"), Ok(Policy::Mask(3)));
        assert_eq!(p.policy("public", "users", "id"), Ok(Policy::Clear));
        assert_eq!(
            p.policy("public", "orders", "phone"),
            Ok(Policy::Truncate(2))
        );
        assert!(matches!(
            p.policy("public", "users", "phone"),
            Err(PolicyError::Ambiguous { .. })
        ));
        assert!(Pattern::parse("a.b").is_err());
        assert!(Pattern::parse("a..c").is_err());
    }

    #[test]
    fn hashes_are_lowercase_hex_hmac_sha256() {
        // RFC 4231 test case 2 uses a 4-byte key; this key is long enough to be accepted.
        let key = HashKey::new(b"0123456789abcdef").expect("key");
        let mut out = Vec::new();
        key.hash_into(b"ana@example.com", &mut out);
        assert_eq!(out.len(), 64);
        assert!(
            out.iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        );
        let expected = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef"),
            b"ana@example.com",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            lower_hex(expected.as_ref())
        );
        assert!(HashKey::new(b"short").is_err());
        assert!(!format!("{key:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn masks_and_truncations_count_characters() {
        let apply = |p: Protection, v: &str| {
            let mut out = Vec::new();
            p.apply(v.as_bytes(), &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(apply(Protection::Mask(4), "11987654321"), "*******4321");
        assert_eq!(apply(Protection::Mask(4), "1234"), "****");
        assert_eq!(apply(Protection::Mask(2), "João"), "**ão");
        assert_eq!(apply(Protection::Truncate(3), "São Paulo"), "São");
        assert_eq!(apply(Protection::Truncate(30), "Ana"), "Ana");
    }

    #[test]
    fn a_changed_policy_or_key_is_refused() {
        let recorded: BTreeMap<String, Policy> = [("email".to_owned(), Policy::Hash)].into();
        let key = HashKey::new(b"0123456789abcdef").unwrap();
        let check = |pairs: &[(&str, Policy)], key: &HashKey| {
            let configured: BTreeMap<String, Policy> =
                pairs.iter().map(|(c, p)| ((*c).to_owned(), *p)).collect();
            let recorded_key = HashKey::new(b"0123456789abcdef").unwrap();
            check_unchanged(
                "public.t",
                &recorded,
                Some(recorded_key.id()),
                &["id", "email"],
                &configured,
                Some(key),
            )
        };
        let same = [
            ("id", Policy::Clear),
            ("email", Policy::Hash),
            ("new", Policy::Mask(2)),
        ];
        check(&same, &key).expect("unchanged, and a new column starts with its policy");
        for changed in [
            [("id", Policy::Clear), ("email", Policy::Clear)],
            [("id", Policy::Hash), ("email", Policy::Hash)],
        ] {
            assert!(matches!(
                check(&changed, &key),
                Err(PolicyError::Changed { .. })
            ));
        }
        let other = HashKey::new(b"fedcba9876543210").unwrap();
        assert!(matches!(
            check(&same, &other),
            Err(PolicyError::KeyChanged { .. })
        ));
    }

    #[test]
    fn personal_looking_names() {
        for name in [
            "email",
            "customer_email",
            "firstName",
            "phone_number",
            "cpf",
            "birth_date",
            "nome",
            "ip",
        ] {
            assert!(looks_personal(name), "{name}");
        }
        for name in [
            "id",
            "amount",
            "created_at",
            "status",
            "shipping_days",
            "zipper_count",
        ] {
            assert!(!looks_personal(name), "{name}");
        }
    }
}
