//! Records the commit the simulator was built from, so every failure report names it.

use std::path::Path;
use std::process::Command;

fn main() {
    let git = Path::new("../.git");
    // Rebuild when HEAD moves: HEAD itself (branch switch) and the ref it points to (commit).
    println!("cargo:rerun-if-changed=../.git/HEAD");
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
        && let Some(reference) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed=../.git/{reference}");
        println!("cargo:rerun-if-changed=../.git/packed-refs");
    }
    let commit = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    println!("cargo:rustc-env=PORTCULLIS_SIM_BUILD_COMMIT={commit}");
}
