//! SQL text: identifiers and literals quoted the way PostgreSQL reads them back, for the
//! statements pg2lake builds (catalog and publication commands, COPY, replication
//! commands) and for table names in messages.

/// `"ident"` with embedded double quotes doubled, as `quote_ident` does.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `'text'` with embedded single quotes doubled, as `quote_literal` does (without the
/// `E''` form: pg2lake never needs backslashes escaped).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
