//! Kernel probe (placeholder).
