//! parse -> classify -> thread -> store on arbitrary bytes. Run with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run parse_classify_thread` from the crate root.
#![no_main]

#[path = "../../tests/fuzz/body.rs"]
mod body;

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use mailticket::store::Store;

thread_local! {
    static STORE: RefCell<Option<Store>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    STORE.with(|s| {
        let mut s = s.borrow_mut();
        let store = s.get_or_insert_with(|| Store::open_in_memory().expect("in-memory store"));
        body::run(store, data);
    });
});
