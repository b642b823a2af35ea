//! Bakes the database version of the newest migration in `../migrations` into the binary, so
//! `template check` and `template pack` agree with a server built from the same tree.

use std::{env, fs, path::Path};

fn main() {
    let dir =
        Path::new(&env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("../migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let newest = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let (version, _) = name.strip_suffix(".sql")?.split_once('_')?;
            version.parse::<i64>().ok()
        })
        .max()
        .expect("migrations/ holds at least one <version>_<name>.sql");
    println!("cargo:rustc-env=PROVISIONER_DB_VERSION={newest}");
}
