//! Timestamps: RFC 3339 UTC strings with millisecond precision. They sort lexicographically,
//! which the database indexes rely on.

use std::time::SystemTime;

/// Now, as `2026-11-27T20:05:00.123Z`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
