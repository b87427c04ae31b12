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

/// The top-level module a file under `src/` belongs to (`main` for main.rs).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(src()).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (name != "lib").then(|| name.to_owned())
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
