use super::*;

#[test]
fn passwords_never_print() {
    let url = DatabaseUrl::new("postgres://app:hunter2@db:5432/authgate");
    assert_eq!(url.redacted(), "postgres://app:REDACTED@db:5432/authgate");
    assert!(!format!("{url:?}").contains("hunter2"));
    let config = Config {
        database: DatabaseConfig {
            url,
            ..DatabaseConfig::default()
        },
        ..Config::default()
    };
    assert!(!config.to_toml().contains("hunter2"));
}
