//! `tagfleet tenant`: the secrets file it writes always loads with the new tenant in it,
//! and a name or a file it cannot add to safely is refused with the file left as it was.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use tagfleet_contracts::Secrets;

fn tenant(secrets: &Path, name: &str, extra: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tagfleet"))
        .args(["tenant", name, "--secrets"])
        .arg(secrets)
        .args(extra)
        .output()
        .unwrap()
}

fn token(out: &Output) -> String {
    assert!(
        out.status.success(),
        "tenant failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn a_dotted_name_is_added_as_one_tenant_and_the_file_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    let acme = token(&tenant(&path, "acme", &[]));
    let dotted = token(&tenant(&path, "acme.x", &[]));
    let secrets = Secrets::load(&path).unwrap();
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets.authenticate(&acme), Some("acme"));
    assert_eq!(secrets.authenticate(&dotted), Some("acme.x"));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_bad_or_taken_name_is_refused_and_the_file_left_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.toml");
    token(&tenant(&path, "acme", &[]));
    let before = std::fs::read(&path).unwrap();
    let key_out = dir.path().join("key.hex");
    for (name, why) in [
        ("a/b", "a tenant name is"),
        ("", "a tenant name is"),
        ("../x", "a tenant name is"),
        ("..", "a tenant name is"),
        ("a b", "a tenant name is"),
        ("a\"b", "a tenant name is"),
        ("acme", "already"),
    ] {
        let out = tenant(&path, name, &[Path::new("--key-out"), &key_out]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name:?} was accepted");
        assert!(stderr.contains(why), "{name:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{name:?}: a token was printed");
        assert_eq!(std::fs::read(&path).unwrap(), before, "{name:?}");
        assert!(!key_out.exists(), "{name:?}: a key file was written");
    }
}

#[test]
fn a_file_that_would_not_load_with_the_tenant_added_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let key = "ab".repeat(32);
    for (case, text) in [
        // Loads, but a [tenants."x"] table cannot extend an inline table.
        (
            "inline table",
            format!("tenants = {{ acme = {{ key = \"{key}\" }} }}\n"),
        ),
        // What `tagfleet tenant acme.x` used to write: `x` nested inside `acme`.
        (
            "nested table",
            format!(
                "[tenants.acme.x]\ntoken_sha256 = \"{}\"\nkey = \"{key}\"\n",
                "cd".repeat(32)
            ),
        ),
        ("not TOML", "[tenants.acme\n".to_owned()),
    ] {
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, &text).unwrap();
        let out = tenant(&path, "globex", &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: accepted");
        assert!(stderr.contains("nothing written"), "{case}: {stderr}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "{case}");
    }
}
