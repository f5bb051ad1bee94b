"""The shared store in Redis: tenant records, the in-process cache kept fresh by
pub/sub, dead letters."""
