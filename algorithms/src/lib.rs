//! The overlay core (placeholder).
