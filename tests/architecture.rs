//! ARCHITECTURE.md's boundary claims, held to the real `crate::` imports of `src/` (as
//! tests/openapi.rs holds docs/openapi.yaml to the router): no import cycle between top-level
//! modules; the leaves (`source`, `pem`, `reference`, `policy`) import neither `api` nor
//! `broker`; `config` imports nothing of the crate but `diag`; and every module the code has
//! is named in ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file under `src/` belongs to (`main` for main.rs). `lib.rs` and
/// `testing.rs` are no rooms: they list what is reached from outside, from every room.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib" && name != "testing").then(|| name.to_owned())
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// module → the other top-level modules its files name as `crate::<module>`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in all {
        let Some(from) = module_of(&file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let deps = g.entry(from.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != from {
                deps.insert(name);
            }
        }
    }
    g
}

#[test]
fn the_module_graph_keeps_its_boundaries() {
    let g = graph();
    for leaf in ["source", "pem", "reference", "policy"] {
        let deps = &g[leaf];
        assert!(
            !deps.contains("api") && !deps.contains("broker"),
            "{leaf} imports {deps:?}"
        );
    }
    // Identity sits between the policy and its users: it may read the policy, nothing above.
    let identity = &g["identity"];
    assert!(
        identity.iter().all(|d| d == "policy"),
        "identity imports {identity:?}"
    );
    let config: Vec<&String> = g["config"].iter().filter(|d| *d != "diag").collect();
    assert!(config.is_empty(), "config imports {config:?}");
    // No cycle: a depth-first search finds no back edge.
    fn visit<'a>(
        g: &'a BTreeMap<String, BTreeSet<String>>,
        m: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        assert!(!path.contains(&m), "import cycle: {path:?} -> {m}");
        path.push(m);
        for d in g.get(m).into_iter().flatten() {
            visit(g, d, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in g.keys() {
        visit(&g, m, &mut Vec::new(), &mut done);
    }
}

/// The module path of a file under `src/` (`src/broker/credentials.rs` → `broker::credentials`,
/// `src/broker.rs` and `src/broker/mod.rs` → `broker`).
fn module_path(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap();
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_str().unwrap().to_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The code of a file without its `#[cfg(test)]` modules (tests may import anything).
fn without_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod ")
        .map_or(text, |at| &text[..at])
}

/// File → the other files it names (`crate::…`, `super::…`, `self::…`, resolved to the
/// longest module path that is a file), leaving out a file's own ancestors and descendants
/// (a module root declares its children and re-exports them: that is not a loop).
fn file_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    all.retain(|f| !f.ends_with("main.rs"));
    let modules: BTreeSet<Vec<String>> = all.iter().map(|f| module_path(f)).collect();
    let ident = |t: &str| -> String {
        t.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut g: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for file in &all {
        let me = module_path(file);
        let text = std::fs::read_to_string(file).unwrap();
        // Comments name modules in prose and doc links: only code counts.
        let code: String = without_tests(&text)
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        let code = code.as_str();
        let mut targets = Vec::new();
        for start in ["crate::", "super::", "self::"] {
            for (i, _) in code.match_indices(start) {
                // A word that only ends in `super::` (`a_super::`) is not the keyword.
                if i > 0 && code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let mut base: Vec<String> = match start {
                    "crate::" => Vec::new(),
                    "self::" => me.clone(),
                    _ => me[..me.len().saturating_sub(1)].to_vec(),
                };
                let mut rest = &code[i + start.len()..];
                while let Some(r) = rest.strip_prefix("super::") {
                    base.pop();
                    rest = r;
                }
                // `super::{a::X, b}` names each of a, b.
                let heads: Vec<&str> = match rest.strip_prefix('{') {
                    Some(inner) => inner
                        .split('}')
                        .next()
                        .unwrap_or_default()
                        .split(',')
                        .map(str::trim)
                        .collect(),
                    None => vec![rest],
                };
                for head in heads {
                    let mut path = base.clone();
                    let mut rest = head;
                    loop {
                        let word = ident(rest);
                        if word.is_empty() {
                            break;
                        }
                        path.push(word.clone());
                        match rest[word.len()..].strip_prefix("::") {
                            Some(r) => rest = r,
                            None => break,
                        }
                    }
                    while !path.is_empty() && !modules.contains(&path) {
                        path.pop();
                    }
                    targets.push(path);
                }
            }
        }
        let edges = g.entry(me.clone()).or_default();
        for t in targets {
            let related = t.starts_with(&me) || me.starts_with(&t);
            if !related {
                edges.insert(t);
            }
        }
    }
    g
}

/// No two files import each other in a loop, not even inside one module (issue 45): a file
/// reads the files below it, and the order is a ladder.
#[test]
fn no_file_imports_another_in_a_loop() {
    let g = file_graph();
    fn visit(
        g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        m: &Vec<String>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == m) {
            let circle: Vec<String> = path[at..].iter().map(|p| p.join("::")).collect();
            panic!("import circle: {} -> {}", circle.join(" -> "), m.join("::"));
        }
        path.push(m.clone());
        for d in g.get(m).into_iter().flatten() {
            visit(g, d, path, done);
        }
        path.pop();
        done.insert(m.clone());
    }
    assert!(g.len() > 50, "the graph reads the files: {}", g.len());
    let mut done = BTreeSet::new();
    for m in g.keys() {
        visit(&g, m, &mut Vec::new(), &mut done);
    }
}

/// Issue 45: the doors stand on one floor, beside `door` (listeners, TLS, the observe layer):
/// none imports another, `door` imports none of them, and the doors that only read — the Vault
/// API, the egress proxy, the CCP API — never reach the management plane.
#[test]
fn no_door_imports_another() {
    let g = graph();
    let doors = ["api", "vault_api", "egress", "ccp_api"];
    for d in doors {
        let deps = &g[d];
        for other in doors.iter().filter(|o| **o != d) {
            assert!(!deps.contains(*other), "{d} imports {other}: {deps:?}");
        }
        assert!(
            deps.contains("door"),
            "{d} does not stand on door: {deps:?}"
        );
    }
    for d in ["vault_api", "egress", "ccp_api"] {
        assert!(!g[d].contains("manage"), "{d} reaches manage");
    }
    let door = &g["door"];
    assert!(
        doors.iter().all(|d| !door.contains(*d)),
        "door imports a door: {door:?}"
    );
}

/// ARCHITECTURE.md's floor table: `| floor | `room` | `a`, `b` |` rows.
fn floor_table() -> BTreeMap<String, (usize, BTreeSet<String>)> {
    let map =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    let mut rows = BTreeMap::new();
    for line in map.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // ["", floor, room, uses, ""]
        let [_, floor, room, uses, _] = cells[..] else {
            continue;
        };
        let Ok(floor) = floor.parse::<usize>() else {
            continue;
        };
        let names = |text: &str| -> BTreeSet<String> {
            text.split(',')
                .map(|n| n.trim().trim_matches('`').to_owned())
                .filter(|n| !n.is_empty() && n != "—")
                .collect()
        };
        let room = room.trim_matches('`').to_owned();
        assert!(
            rows.insert(room.clone(), (floor, names(uses))).is_none(),
            "ARCHITECTURE.md lists `{room}` twice"
        );
    }
    rows
}

#[test]
fn architecture_md_floors_are_the_imports() {
    let mut g = graph();
    g.remove("main");
    let table = floor_table();
    let listed: BTreeSet<&String> = table.keys().collect();
    let rooms: BTreeSet<&String> = g.keys().collect();
    assert_eq!(
        listed, rooms,
        "ARCHITECTURE.md's floor table lists other rooms than src/ has"
    );
    fn floor(g: &BTreeMap<String, BTreeSet<String>>, m: &str) -> usize {
        g[m].iter()
            .filter(|d| g.contains_key(*d))
            .map(|d| floor(g, d) + 1)
            .max()
            .unwrap_or(0)
    }
    for (room, (at, uses)) in &table {
        assert_eq!(
            uses, &g[room],
            "ARCHITECTURE.md says `{room}` uses {uses:?}; its imports are {:?}",
            g[room]
        );
        assert_eq!(
            *at,
            floor(&g, room),
            "ARCHITECTURE.md puts `{room}` on floor {at}"
        );
    }
}

#[test]
fn architecture_md_names_every_module() {
    let map =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .unwrap();
    for m in graph().keys() {
        let named = map.contains(&format!("src/{m}.rs")) || map.contains(&format!("src/{m}/"));
        assert!(named, "ARCHITECTURE.md does not describe src/{m}");
    }
}

#[test]
fn every_path_architecture_md_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    for word in map.split(|c: char| c.is_whitespace() || "`*(),;".contains(c)) {
        let word = word.trim_end_matches(['.', ':']);
        let looks_like_path = (word.starts_with("src/") || word.starts_with("tests/"))
            && (word.ends_with(".rs") || word.ends_with('/'));
        if looks_like_path {
            assert!(
                root.join(word).exists(),
                "ARCHITECTURE.md names {word}, which does not exist"
            );
        }
    }
}

/// `(name, version)` of every package in a Cargo.lock.
fn locked(path: &Path) -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let lock: toml::Table = toml::from_str(&text).unwrap();
    lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The fuzz targets exercise the crate as it ships: every crate both lock files hold is at a
/// version the main lock file has (fuzz/README.md says how to bring them back in step).
#[test]
fn the_fuzz_lock_file_is_in_step_with_the_main_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let main = locked(&root.join("Cargo.lock"));
    let names: BTreeSet<&str> = main.iter().map(|(n, _)| n.as_str()).collect();
    let behind: Vec<String> = locked(&root.join("fuzz/Cargo.lock"))
        .into_iter()
        .filter(|(n, v)| names.contains(n.as_str()) && !main.contains(&(n.clone(), v.clone())))
        .map(|(n, v)| format!("{n} {v}"))
        .collect();
    assert!(
        behind.is_empty(),
        "fuzz/Cargo.lock differs from Cargo.lock: {behind:?}"
    );
    // A dependency added to the crate must reach the fuzz lock too (a fuzz build would
    // otherwise rewrite it): every `[dependencies]` entry of Cargo.toml is among keybroker's
    // dependencies in fuzz/Cargo.lock.
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).unwrap()).unwrap();
    let fuzzed = crate_dependencies(&root.join("fuzz/Cargo.lock"));
    let missing: Vec<&String> = manifest["dependencies"]
        .as_table()
        .unwrap()
        .keys()
        .filter(|d| !fuzzed.contains(*d))
        .collect();
    assert!(
        missing.is_empty(),
        "fuzz/Cargo.lock lacks keybroker's dependencies {missing:?}"
    );
}

/// The names of the `dependencies` of the `keybroker` package in a Cargo.lock.
fn crate_dependencies(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let lock: toml::Table = toml::from_str(&text).unwrap();
    let package = lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("keybroker"))
        .expect("keybroker is in the lock file");
    package["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        // `name` or `name version` (when the lock holds several versions of it).
        .map(|d| d.as_str().unwrap().split(' ').next().unwrap().to_owned())
        .collect()
}

/// The lines of `line` that count for braces: string and char literals and `//` comments out.
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            // A char literal ('{', '\''), never a lifetime ('a).
            '\'' if matches!(chars.clone().nth(1), Some('\'')) => {
                chars.next();
                chars.next();
            }
            '\'' if chars.peek() == Some(&'\\') => {
                for d in chars.by_ref() {
                    if d == '\'' {
                        break;
                    }
                }
                chars.next();
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

/// Every function outside tests longer than 100 lines, as `file:line name (lines)`, unless a
/// comment just above it says why it is long ("Long by nature").
fn long_functions() -> Vec<String> {
    let mut all = Vec::new();
    files(&src(), &mut all);
    let starts = fn_name_of();
    let mut long = Vec::new();
    for file in all {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Unit tests sit at the end of a file: `#[cfg(test)]` on a `mod` (an item gated on
        // tests elsewhere — an import — is no end).
        let end = lines
            .windows(2)
            .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod "))
            .unwrap_or(lines.len());
        for i in 0..end {
            let Some(name) = starts(lines[i]) else {
                continue;
            };
            let (mut depth, mut opened) = (0i32, false);
            for (j, line) in lines.iter().enumerate().skip(i) {
                let code = code_of(line);
                if !opened && code.contains(';') && !code.contains('{') {
                    break; // a declaration without a body
                }
                for c in code.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                if opened && depth == 0 {
                    let n = j - i + 1;
                    let why = lines[i.saturating_sub(8)..i]
                        .iter()
                        .any(|l| l.contains("Long by nature"));
                    if n > 100 && !why {
                        let rel = file.strip_prefix(src()).unwrap().display().to_string();
                        long.push(format!("src/{rel}:{} {name} ({n} lines)", i + 1));
                    }
                    break;
                }
            }
        }
    }
    long
}

/// The name of the function a line starts, if it starts one.
fn fn_name_of() -> impl Fn(&str) -> Option<String> {
    |line: &str| {
        let mut words = line.split_whitespace().peekable();
        while let Some(w) = words.peek() {
            let qualifier = w.starts_with("pub")
                || matches!(*w, "async" | "const" | "unsafe" | "extern" | "\"C\"");
            if !qualifier {
                break;
            }
            words.next();
        }
        if words.next()? != "fn" {
            return None;
        }
        let name: String = words
            .next()?
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        (!name.is_empty()).then_some(name)
    }
}

#[test]
fn no_function_outside_tests_is_over_100_lines_without_saying_why() {
    let long = long_functions();
    assert!(
        long.is_empty(),
        "split these, or say above each why it is long (\"Long by nature: …\"):\n{}",
        long.join("\n")
    );
}
