//! Unit tests of the spool sink's routing against a controllable in-memory
//! sink (the end-to-end tests use the real broker).
