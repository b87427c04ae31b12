//! The CCP query builder: whatever the safe, folder, object and reason hold, the wire carries
//! exactly one AppID, exactly the intended parameters in order, and values that decode back
//! to themselves — or the builder refuses.
#![no_main]

use keybroker::testing::source::build_query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, &str, &str, &str)| {
    let (app, safe, folder, object, reason) = input;
    let params = [("Safe", safe), ("Folder", folder), ("Object", object), ("Reason", reason)];
    let Ok(q) = build_query(app, &params) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = q.split('&').map(|p| p.split_once('=').expect("name=value")).collect();
    let names: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["AppID", "Safe", "Folder", "Object", "Reason"], "{q}");
    assert_eq!(q.to_ascii_lowercase().matches("appid=").count(), 1, "{q}");
    let expected = [app, safe, folder, object, reason];
    for ((_, raw), want) in pairs.iter().zip(expected) {
        assert!(!raw.contains(['&', '=', ';', '+']), "{q}");
        let decoded = percent_encoding::percent_decode_str(raw).decode_utf8().unwrap();
        assert_eq!(decoded, want);
    }
});
