// sqlx::migrate! embeds migrations/ at compile time, but cargo only re-runs the macro when a
// Rust source changes; this makes a new or edited migration file trigger a rebuild.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
