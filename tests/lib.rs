//! End-to-end tests live in `tests/tests/`; this crate has no library code. Its binary,
//! `portcullis-e2e` (`portcullis_e2e.rs`), is the `portcullis` command line the tests run.
