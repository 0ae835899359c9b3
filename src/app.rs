//! Wires components.
