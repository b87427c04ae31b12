//! RFC 3339 times as every field takes them (`activate_at`, `starts_at`, `ends_at`, a pin's
//! `not_before`/`not_after`): any offset (`Z`, `+02:00`, `-05:30`), fractional seconds allowed.
//! humantime, which formats them, parses only `Z`.

use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `text` as a point in time, if it is an RFC 3339 date-time.
pub(crate) fn rfc3339(text: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_offset_names_the_same_instant() {
        let z = rfc3339("2030-01-01T10:00:00Z").unwrap();
        assert_eq!(rfc3339("2030-01-01T12:00:00+02:00"), Some(z));
        assert_eq!(rfc3339("2030-01-01T04:30:00-05:30"), Some(z));
        assert_eq!(rfc3339("2030-01-01T10:00:00.000Z"), Some(z));
        for bad in [
            "2030-01-01",
            "2030-01-01T10:00:00",
            "soon",
            "",
            "2030-13-01T00:00:00Z",
        ] {
            assert_eq!(rfc3339(bad), None, "{bad}");
        }
    }
}
