//! The sans-IO pool core.
