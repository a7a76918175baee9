//! Handshake with the module. Runs in the guest, where `/dev/muserload` exists.

use muserload::{features, Error, Object};

const ALL: u64 =
    features::SIGNAL | features::QUEUE | features::MOVE | features::LOADV | features::STATS;

#[test]
fn open_and_handshake() {
    let object = Object::open(ALL).expect("open and handshake");
    assert_eq!(object.features(), ALL);
}

#[test]
fn unknown_feature_is_refused() {
    match Object::open(1 << 63) {
        Err(Error::Features { missing, supported }) => {
            assert_eq!(missing, 1 << 63);
            assert_eq!(supported, ALL);
        }
        other => panic!("expected Error::Features, got {other:?}"),
    }
}

#[test]
fn missing_device_names_the_path() {
    let err = Object::open_path("/nonexistent/muserload", 0).expect_err("no such device");
    assert!(matches!(err, Error::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/muserload"), "{err}");
}
