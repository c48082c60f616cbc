//! parse -> classify -> thread -> store on arbitrary bytes. Run with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run parse_classify_thread` from the crate root.
#![no_main]

#[path = "../../tests/fuzz/body.rs"]
mod body;

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use mailticket::store::Store;

/// Inputs per store: threading sees earlier inputs, memory stays bounded.
const PER_STORE: u32 = 2000;

thread_local! {
    static STORE: RefCell<Option<(Store, u32)>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    STORE.with(|s| {
        let mut s = s.borrow_mut();
        if s.as_ref().is_none_or(|(_, n)| *n >= PER_STORE) {
            *s = Some((Store::open_in_memory().expect("in-memory store"), 0));
        }
        if let Some((store, n)) = s.as_mut() {
            *n += 1;
            body::run(store, data);
        }
    });
});
