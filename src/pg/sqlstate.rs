//! Which server errors are worth a new attempt: one list of SQLSTATEs for every
//! connection pg2lake makes (catalog queries, the snapshot's COPY, the replication
//! connection, connecting itself).
//!
//! Transient: the connection or the server went away or is not ready (class 08, admin or
//! crash shutdown, starting up, idle-session timeout), too many connections, the slot still
//! held by a consumer that is going away, and the two conflicts a retry resolves
//! (serialization failure, deadlock). Everything else (privileges, missing objects, bad
//! data, configuration) needs a human, and retrying would only hide it.

/// Whether a server error with SQLSTATE `code` may go away by itself.
pub fn is_transient(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || matches!(
            code,
            "57P01" // admin_shutdown
                | "57P02" // crash_shutdown
                | "57P03" // cannot_connect_now (starting up, recovery)
                | "57P05" // idle_session_timeout
                | "53300" // too_many_connections
                | "55006" // object_in_use: a slot held by a consumer going away
                | "40001" // serialization_failure
                | "40P01" // deadlock_detected
        )
}

/// Whether a failed query or connection attempt may succeed next time: the connection
/// broke (no server error at all), or the server's error is transient.
pub fn query_error_is_transient(error: &tokio_postgres::Error) -> bool {
    error.is_closed()
        || match error.code() {
            None => true,
            Some(code) => is_transient(code.code()),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_transient_and_mistakes_are_not() {
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "53300", "55006", "40001",
        ] {
            assert!(is_transient(code), "{code}");
        }
        // database dropped, insufficient privilege, undefined table, syntax error, a
        // statement timeout (a setting, not an outage)
        for code in ["57P04", "42501", "42P01", "42601", "57014"] {
            assert!(!is_transient(code), "{code}");
        }
    }
}
