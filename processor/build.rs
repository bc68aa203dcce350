// Rebuild when a migration is added or changed: `sqlx::migrate!` embeds the files at
// compile time (as `sqlx migrate build-script` writes it).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
