//! Command elevation provider.
