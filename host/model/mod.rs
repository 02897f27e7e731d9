//! Model configuration and weights.
