//! Every fixed limit of the server side (a `const NAME_MAX...` in the modules that run
//! `lior serve`) is listed in README.md's table of fixed limits, so an operator finds every
//! bound in one place. Adding a limit without listing it fails here.

use std::path::Path;

/// The server-side source folders and files whose limits an operator meets.
const SERVER_SIDE: &[&str] = &[
    "src/server.rs",
    "src/qm",
    "src/store",
    "src/engine",
    "src/http",
    "src/session",
    "src/amqp",
    "src/shard_app.rs",
];

fn rust_files(p: &Path, out: &mut Vec<std::path::PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            rust_files(&e, out);
        }
    } else if p.extension().is_some_and(|x| x == "rs") {
        out.push(p.to_path_buf());
    }
}

/// Names of `const` items ending in `_MAX` (or containing `_MAX_`) declared in `src`.
fn limit_names(src: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in src.lines() {
        let t = line.trim_start();
        let t = t
            .strip_prefix("pub(crate) ")
            .or_else(|| t.strip_prefix("pub "))
            .unwrap_or(t);
        let Some(rest) = t.strip_prefix("const ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if name.ends_with("_MAX") || name.contains("_MAX_") {
            names.push(name);
        }
    }
    names
}

#[test]
fn every_server_side_limit_is_in_the_readme_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut files = Vec::new();
    for p in SERVER_SIDE {
        rust_files(&root.join(p), &mut files);
    }
    let mut missing = Vec::new();
    let mut seen = 0;
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        // Test modules' constants are not limits of the server.
        let src = src.split("#[cfg(test)]").next().unwrap_or("");
        for name in limit_names(src) {
            seen += 1;
            if !readme.contains(&format!("`{name}`")) {
                missing.push(format!(
                    "{name} ({})",
                    f.strip_prefix(root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        seen >= 20,
        "the scan found only {seen} limits: is it reading the sources?"
    );
    assert!(
        missing.is_empty(),
        "limits missing from README.md's table of fixed limits: {missing:?}"
    );
}

#[test]
fn the_scan_recognises_limit_declarations() {
    let src = "pub const A_MAX: usize = 1;\nconst B_MAX_BYTES: u32 = 2;\npub(crate) const C_MAX: u8 = 3;\nconst NOT_A_LIMIT: u8 = 4;\n    pub const D_MAX: u8 = 5;";
    assert_eq!(limit_names(src), ["A_MAX", "B_MAX_BYTES", "C_MAX", "D_MAX"]);
}
