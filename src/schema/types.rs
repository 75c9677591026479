//! Types whose OIDs are database-specific (enums, domains, composites, arrays of those,
//! extension types), as the catalog describes them, and the configured column types.
//!
//! ```text
//!   Relation message / catalog columns ─► OIDs ≥ FIRST_NORMAL_OID not yet known
//!        │                                   │ pg::catalog::resolve_types (once per OID,
//!        │                                   ▼  following domains' base and arrays' element)
//!        └──────────────► TypeCatalog ─► Conversion::for_resolved ─► SourceColumn
//!                         (+ column_types from the config, by "schema.table.column")
//! ```
//!
//! Both the streaming path (Relation messages) and the snapshot path (the catalog's
//! columns at start-up) type their columns through the same [`TypeCatalog`], so a table
//! gets the same lake layout whichever path writes it first.

use std::collections::{HashMap, HashSet};

use super::RelationColumn;
use super::{Conversion, SchemaError, oid, pg_type_name};
use crate::privacy::{ColumnPolicies, Policy, PolicyError};

/// The first OID Postgres gives to user objects; every builtin type's OID is below it.
pub const FIRST_NORMAL_OID: u32 = 16384;

/// What `pg_type` says about a type, as far as the mapping needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogKind {
    /// An enum (`typtype = 'e'`): stored as its label.
    Enum,
    /// A composite type (`'c'`): stored as its text form, `(1,"a b",)`.
    Composite,
    /// A domain (`'d'`) over `base` (builtin or not) with the domain's typmod.
    Domain {
        /// `typbasetype`.
        base: u32,
        /// `typtypmod`: the base type's modifier, e.g. numeric(10,2)'s.
        base_modifier: i32,
    },
    /// An array (`typcategory = 'A'`) of `element`.
    Array {
        /// `typelem`.
        element: u32,
        /// The element type's `typdelim`: what separates elements in the array's text
        /// form. `,` for nearly every type; PostGIS geometry and geography use `:`.
        delimiter: u8,
    },
    /// A base type (`'b'`), e.g. from an extension: mapped by name.
    Base,
    /// Anything else: ranges and multiranges of non-builtin types, pseudo-types.
    Other,
}

/// One catalog-described type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogType {
    /// `typname`, unqualified (extension types are matched by it, whatever their schema).
    pub name: String,
    /// Schema-qualified name for messages.
    pub qualified_name: String,
    /// The extension the type belongs to, if any.
    pub extension: Option<String>,
    /// How the type is built.
    pub kind: CatalogKind,
}

/// Base types known by name: `(typname, conversion)`.
const NAMED_BASE_TYPES: [(&str, Conversion); 4] = [
    // hstore prints `"k"=>"v", "k2"=>NULL`.
    ("hstore", Conversion::Hstore),
    // citext is text compared case-insensitively.
    ("citext", Conversion::Text),
    // PostGIS prints geometry and geography as hex EWKB: WKB with the SRID inside.
    ("geometry", Conversion::HexBinary),
    ("geography", Conversion::HexBinary),
];

/// How deep domains and arrays may nest before the catalog is assumed inconsistent.
const MAX_NESTING: usize = 32;

/// The catalog-described types seen so far and the configured column types.
#[derive(Debug, Default, Clone)]
pub struct TypeCatalog {
    types: HashMap<u32, CatalogType>,
    /// OIDs the catalog did not know (dropped since the change was logged).
    missing: HashSet<u32>,
    /// `schema.table.column` → the conversion the configuration asks for.
    configured: HashMap<String, Conversion>,
    /// Columns already warned about (`schema.table.column`).
    warned: HashSet<String>,
    /// The column policies for personal data (`privacy` in the config).
    policies: ColumnPolicies,
}

impl TypeCatalog {
    /// A catalog with the configured column types (`column_types` in the config).
    pub fn new(configured: HashMap<String, Conversion>) -> Self {
        TypeCatalog {
            configured,
            ..TypeCatalog::default()
        }
    }

    /// The same catalog with the column policies (`privacy` in the config).
    pub fn with_policies(mut self, policies: ColumnPolicies) -> Self {
        self.policies = policies;
        self
    }

    /// The column policies.
    pub fn policies(&self) -> &ColumnPolicies {
        &self.policies
    }

    /// The policy of `column` of table `namespace.table`; an error when it is ambiguous or
    /// would make distinct keys equal.
    pub fn policy(
        &self,
        namespace: &str,
        table: &str,
        column: &RelationColumn,
    ) -> Result<Policy, SchemaError> {
        let policy = self.policies.policy(namespace, table, &column.name)?;
        if column.is_key && !policy.keeps_keys_distinct() {
            return Err(PolicyError::KeyColumn {
                column: column_key(namespace, table, &column.name),
                policy,
            }
            .into());
        }
        Ok(policy)
    }

    /// Records what the catalog says about `type_oid` (`None`: it does not know it).
    pub fn insert(&mut self, type_oid: u32, described: Option<CatalogType>) {
        match described {
            Some(described) => {
                self.types.insert(type_oid, described);
            }
            None => {
                self.missing.insert(type_oid);
            }
        }
    }

    /// The description of `type_oid`, once resolved.
    pub fn get(&self, type_oid: u32) -> Option<&CatalogType> {
        self.types.get(&type_oid)
    }

    /// Of `oids`, those that need a catalog lookup: not builtin and not looked up yet.
    pub fn unresolved(&self, oids: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut wanted: Vec<u32> = oids
            .into_iter()
            .filter(|&o| {
                o >= FIRST_NORMAL_OID && !self.types.contains_key(&o) && !self.missing.contains(&o)
            })
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted
    }

    /// The OIDs a described type refers to (a domain's base, an array's element).
    pub fn references(described: &CatalogType) -> Option<u32> {
        match described.kind {
            CatalogKind::Domain { base, .. } => Some(base),
            CatalogKind::Array { element, .. } => Some(element),
            _ => None,
        }
    }

    /// The conversion of `column` of table `namespace.table`: text when its policy
    /// rewrites values (hash, mask, truncate), else the configured one if any (checked
    /// against the column's type), else the one its type maps to.
    pub fn conversion(
        &self,
        namespace: &str,
        table: &str,
        column: &RelationColumn,
    ) -> Result<Conversion, SchemaError> {
        if self
            .policies
            .policy(namespace, table, &column.name)?
            .rewrites_values()
        {
            return Ok(Conversion::Text);
        }
        let mapped = Conversion::for_resolved(column.type_oid, column.type_modifier, self);
        let key = column_key(namespace, table, &column.name);
        let Some(&configured) = self.configured.get(&key) else {
            return Ok(mapped);
        };
        // Any column may keep its text form; only numeric columns (also through
        // domains) may be forced into a decimal.
        if configured != Conversion::Text && self.base_type(column.type_oid) != oid::NUMERIC {
            return Err(SchemaError::ConfiguredType {
                column: key,
                pg_type: self.type_name(column.type_oid, column.type_modifier),
                reason: "only numeric columns can be given a decimal type".into(),
            });
        }
        Ok(configured)
    }

    /// `type_oid` with domains resolved down to their base type.
    fn base_type(&self, type_oid: u32) -> u32 {
        let mut current = type_oid;
        for _ in 0..MAX_NESTING {
            match self.types.get(&current).map(|t| &t.kind) {
                Some(CatalogKind::Domain { base, .. }) => current = *base,
                _ => break,
            }
        }
        current
    }

    /// A Postgres type name for messages: builtin names, catalog names, else the OID.
    pub fn type_name(&self, type_oid: u32, type_modifier: i32) -> String {
        match self.types.get(&type_oid) {
            Some(described) => described.qualified_name.clone(),
            None => pg_type_name(type_oid, type_modifier),
        }
    }

    /// Whether `type_oid` is stored as text only because pg2lake does not know it: a base
    /// type not in the named list, a range or multirange of catalog types, a pseudo-type,
    /// a type the catalog no longer has — or an array or domain over one of those.
    pub fn is_unknown(&self, type_oid: u32) -> bool {
        let mut current = type_oid;
        for _ in 0..MAX_NESTING {
            if self.missing.contains(&current) {
                return true;
            }
            let Some(described) = self.types.get(&current) else {
                return false;
            };
            match &described.kind {
                CatalogKind::Domain { base, .. } => current = *base,
                CatalogKind::Array { element, .. } => current = *element,
                CatalogKind::Base => {
                    return !NAMED_BASE_TYPES.iter().any(|(n, _)| *n == described.name);
                }
                CatalogKind::Other => return true,
                CatalogKind::Enum | CatalogKind::Composite => return false,
            }
        }
        true
    }

    /// Logs, once per column, the columns of `namespace.table` whose type pg2lake does
    /// not know and stores as Postgres's text form.
    pub fn warn_unknown(&mut self, namespace: &str, table: &str, columns: &[RelationColumn]) {
        for column in columns {
            if !self.is_unknown(column.type_oid) {
                continue;
            }
            let key = column_key(namespace, table, &column.name);
            if self.warned.insert(key) {
                tracing::warn!(
                    table = %format!("{namespace}.{table}"),
                    column = %column.name,
                    pg_type = %self.type_name(column.type_oid, column.type_modifier),
                    "column type unknown to pg2lake; storing its postgres text form as a string"
                );
            }
        }
    }

    /// The configured `column_types` keys that name none of `columns` (a typo, or a
    /// column not added yet), sorted.
    pub fn unmatched_configured<'a>(
        &self,
        columns: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> Vec<String> {
        let present: HashSet<String> = columns
            .into_iter()
            .map(|(namespace, table, column)| column_key(namespace, table, column))
            .collect();
        let mut unmatched: Vec<String> = self
            .configured
            .keys()
            .filter(|key| !present.contains(*key))
            .cloned()
            .collect();
        unmatched.sort();
        unmatched
    }

    /// The conversion of a catalog-described type (called by
    /// [`Conversion::for_resolved`], which owns the mapping).
    pub(super) fn described(&self, type_oid: u32) -> Option<&CatalogKind> {
        self.types.get(&type_oid).map(|t| &t.kind)
    }

    /// The conversion of a named base type.
    pub(super) fn named_base(&self, type_oid: u32) -> Option<Conversion> {
        let described = self.types.get(&type_oid)?;
        NAMED_BASE_TYPES
            .iter()
            .find(|(name, _)| *name == described.name)
            .map(|&(_, conversion)| conversion)
    }
}

/// The `column_types` key of a column: `schema.table.column`.
pub fn column_key(namespace: &str, table: &str, column: &str) -> String {
    format!("{namespace}.{table}.{column}")
}

/// The depth limit of [`Conversion::for_resolved`].
pub(super) const fn max_nesting() -> usize {
    MAX_NESTING
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::fixtures::{col as column, typmod};
    use crate::schema::{Element, arrow_type};

    fn described(name: &str, kind: CatalogKind) -> Option<CatalogType> {
        Some(CatalogType {
            name: name.to_owned(),
            qualified_name: format!("public.{name}"),
            extension: None,
            kind,
        })
    }

    const MOOD: u32 = 20_000;
    const PRICE: u32 = 20_001;
    const POSITIVE_PRICE: u32 = 20_002;
    const PRICE_ARRAY: u32 = 20_003;
    const MOOD_ARRAY: u32 = 20_004;
    const PAIR: u32 = 20_005;
    const HSTORE: u32 = 20_006;
    const GEOMETRY: u32 = 20_007;
    const CUBE: u32 = 20_008;
    const TAGS: u32 = 20_009;
    const FLOATRANGE: u32 = 20_010;
    const GEOMETRY_ARRAY: u32 = 20_011;

    fn catalog() -> TypeCatalog {
        let mut types = TypeCatalog::default();
        types.insert(MOOD, described("mood", CatalogKind::Enum));
        let price = CatalogKind::Domain {
            base: oid::NUMERIC,
            base_modifier: typmod(10, 2),
        };
        types.insert(PRICE, described("price", price));
        let positive = CatalogKind::Domain {
            base: PRICE,
            base_modifier: -1,
        };
        types.insert(POSITIVE_PRICE, described("positive_price", positive));
        let prices = CatalogKind::Array {
            element: POSITIVE_PRICE,
            delimiter: b',',
        };
        types.insert(PRICE_ARRAY, described("_positive_price", prices));
        let moods = CatalogKind::Array {
            element: MOOD,
            delimiter: b',',
        };
        types.insert(MOOD_ARRAY, described("_mood", moods));
        types.insert(PAIR, described("pair", CatalogKind::Composite));
        types.insert(HSTORE, described("hstore", CatalogKind::Base));
        types.insert(GEOMETRY, described("geometry", CatalogKind::Base));
        let geometries = CatalogKind::Array {
            element: GEOMETRY,
            delimiter: b':',
        };
        types.insert(GEOMETRY_ARRAY, described("_geometry", geometries));
        types.insert(CUBE, described("cube", CatalogKind::Base));
        // A domain over text[]: 1009 is the builtin _text.
        let tags = CatalogKind::Domain {
            base: 1009,
            base_modifier: -1,
        };
        types.insert(TAGS, described("tags", tags));
        types.insert(FLOATRANGE, described("floatrange", CatalogKind::Other));
        types
    }

    #[test]
    fn maps_catalog_types() {
        let types = catalog();
        let map = |type_oid| Conversion::for_resolved(type_oid, -1, &types);
        assert_eq!(map(MOOD), Conversion::Text);
        let decimal = Conversion::Decimal {
            precision: 10,
            scale: 2,
        };
        assert_eq!(map(PRICE), decimal);
        assert_eq!(map(POSITIVE_PRICE), decimal, "a domain over a domain");
        assert_eq!(
            map(PRICE_ARRAY),
            Conversion::Array(Element::Decimal {
                precision: 10,
                scale: 2
            })
        );
        assert_eq!(map(MOOD_ARRAY), Conversion::Array(Element::Text));
        assert_eq!(map(PAIR), Conversion::Text);
        assert_eq!(map(HSTORE), Conversion::Hstore);
        assert_eq!(map(GEOMETRY), Conversion::HexBinary);
        // `{0101…:0101…}`: elements split by `:` are kept as the array's text.
        assert_eq!(map(GEOMETRY_ARRAY), Conversion::Text);
        assert_eq!(map(CUBE), Conversion::Text);
        assert_eq!(map(TAGS), Conversion::Array(Element::Text));
        assert_eq!(map(FLOATRANGE), Conversion::Text);
        // Builtins and types never looked up map as for_type does.
        assert_eq!(map(oid::INT4), Conversion::Int32);
        assert_eq!(map(99_999), Conversion::Text);
        assert_eq!(
            Conversion::for_resolved(oid::INTERVAL, -1, &types).data_type(),
            arrow_type(oid::INTERVAL, -1)
        );
    }

    #[test]
    fn catalog_columns_are_named_in_messages() {
        let types = catalog();
        let columns = [column("m", MOOD, -1), column("p", PRICE, -1)];
        let schema = crate::schema::TableSchema::with_types("public", "t", &columns, &types)
            .expect("a layout");
        assert_eq!(schema.columns[0].pg_type(), "public.mood");
        assert_eq!(
            schema.columns[1].type_description(),
            "public.price (lake type decimal(10,2))"
        );
    }

    #[test]
    fn a_domain_loop_ends_as_text() {
        let mut types = TypeCatalog::default();
        let a = CatalogKind::Domain {
            base: 30_001,
            base_modifier: -1,
        };
        let b = CatalogKind::Domain {
            base: 30_000,
            base_modifier: -1,
        };
        types.insert(30_000, described("a", a));
        types.insert(30_001, described("b", b));
        assert_eq!(
            Conversion::for_resolved(30_000, -1, &types),
            Conversion::Text
        );
        assert!(types.is_unknown(30_000));
    }

    #[test]
    fn knows_what_needs_a_lookup_and_what_is_unknown() {
        let mut types = catalog();
        assert_eq!(
            types.unresolved([oid::INT4, MOOD, 40_000, 40_000, 40_001]),
            [40_000, 40_001]
        );
        types.insert(40_000, None);
        assert_eq!(types.unresolved([40_000]), Vec::<u32>::new());
        assert!(types.is_unknown(40_000), "dropped since");
        assert!(types.is_unknown(CUBE));
        assert!(types.is_unknown(FLOATRANGE));
        for known in [
            MOOD,
            PRICE_ARRAY,
            PAIR,
            HSTORE,
            GEOMETRY,
            TAGS,
            oid::INT4,
            1009,
        ] {
            assert!(!types.is_unknown(known), "{known}");
        }
        assert_eq!(types.type_name(MOOD, -1), "public.mood");
        assert_eq!(types.type_name(oid::INT4, -1), "int4");
    }

    #[test]
    fn configured_decimals_apply_to_numeric_columns_only() {
        let forced = Conversion::ConfiguredDecimal {
            precision: 20,
            scale: 4,
        };
        let mut types = TypeCatalog::new(HashMap::from([
            ("public.t.amount".to_owned(), forced),
            ("public.t.price".to_owned(), forced),
            ("public.t.note".to_owned(), forced),
        ]));
        types.insert(PRICE, catalog().get(PRICE).cloned());
        let conversion = |c: &RelationColumn| types.conversion("public", "t", c);
        assert_eq!(conversion(&column("amount", oid::NUMERIC, -1)), Ok(forced));
        assert_eq!(conversion(&column("price", PRICE, -1)), Ok(forced));
        assert_eq!(
            conversion(&column("other", oid::NUMERIC, -1)),
            Ok(Conversion::Text)
        );
        assert_eq!(
            types.unmatched_configured([("public", "t", "amount"), ("public", "t", "price")]),
            ["public.t.note"]
        );
        let err = conversion(&column("note", oid::TEXT, -1)).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("column_types.\"public.t.note\"") && message.contains("text"),
            "{message}"
        );
    }

    #[test]
    fn any_column_may_keep_its_text_form() {
        let types = TypeCatalog::new(HashMap::from([
            ("public.t.grid".to_owned(), Conversion::Text),
            ("public.t.n".to_owned(), Conversion::Text),
        ]));
        let conversion = |c: &RelationColumn| types.conversion("public", "t", c);
        // int4[] and int4: a list and an integer unless configured.
        assert_eq!(conversion(&column("grid", 1007, -1)), Ok(Conversion::Text));
        assert_eq!(
            conversion(&column("n", oid::INT4, -1)),
            Ok(Conversion::Text)
        );
        assert_eq!(
            conversion(&column("other", 1007, -1)),
            Ok(Conversion::Array(Element::Int32))
        );
    }
}
