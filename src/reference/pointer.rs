//! JSON pointers (RFC 6901), as the JSON and the YAML scanner write the place of a reference.

/// Appends `/` and `key` as one RFC 6901 pointer segment (`~` written `~0`, `/` written `~1`):
/// the one spelling of a segment, for the JSON and the YAML scanner.
pub(super) fn push_pointer_segment(pointer: &mut String, key: &str) {
    pointer.push('/');
    if key.contains(['~', '/']) {
        pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
    } else {
        pointer.push_str(key);
    }
}
