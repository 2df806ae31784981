//! The committed `openapi/openapi.json` must be exactly what the code generates.
//! Regenerate it with `cargo run -- openapi --output openapi/openapi.json`.

#[test]
fn committed_openapi_document_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).expect("openapi/openapi.json is committed");
    let generated = retaind::api::spec().to_pretty_json().unwrap() + "\n";
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: run `cargo run -- openapi --output openapi/openapi.json`"
    );
}
