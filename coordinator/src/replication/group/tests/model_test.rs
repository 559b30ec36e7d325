//! Property test (to come).
