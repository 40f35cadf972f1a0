//! The store file loader on arbitrary text: never panics (errors are
//! errors); every connector of a loaded store has a namespace and a valid
//! address and is found by key and by namespace; documents written by
//! `connector::yaml::to_string` read back as the same values.

#![no_main]

use connector::address::RegistryAddress;
use connector::store::{ConnectorStore, FileStore};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };

    if let Ok(documents) = connector::yaml::parse_documents(text) {
        for document in &documents {
            assert!(!document.is_null());
            if let Ok(written) = connector::yaml::to_string(document) {
                let read = connector::yaml::parse_documents(&written)
                    .unwrap_or_else(|e| panic!("{written:?} from {document:?} does not read back: {e}"));
                assert_eq!(read, vec![document.clone()], "written as {written:?}");
            }
        }
    }

    let Ok(store) = FileStore::from_yaml(text) else { return };
    let snapshot = store.snapshot();
    for connector in snapshot.connectors() {
        let namespace = connector
            .metadata
            .namespace
            .as_deref()
            .expect("a stored connector has a namespace");
        let _ = namespace;
        let key = connector.key("default");
        assert!(
            RegistryAddress::parse(&connector.spec.address).is_ok(),
            "{}",
            connector.spec.address
        );
        let found = store.connector(&key).expect("found by its key");
        assert_eq!(found.spec.address, connector.spec.address);
        assert!(
            store
                .connectors_in(&key.namespace)
                .iter()
                .any(|c| c.spec.address == connector.spec.address)
        );
    }
});
