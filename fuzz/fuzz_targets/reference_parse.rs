//! The reference parser on arbitrary text: never panics, and whatever it accepts prints to a
//! canonical form that parses back to the same reference.
#![no_main]

use keybroker::testing::reference::{Part, parse_reference, parse_template};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(template) = parse_template(text) else {
        return;
    };
    if !text.contains('$') {
        assert_eq!(template.parts, vec![Part::Literal(text.to_owned())]);
    }
    for (reference, offset) in template.references() {
        assert!(text[offset..].starts_with('$'));
        let printed = reference.to_string();
        let back = parse_reference(&printed).expect("canonical form parses");
        assert_eq!(&back, reference);
        assert_eq!(back.to_string(), printed);
    }
});
