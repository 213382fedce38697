//! A TCP or TLS byte stream.
