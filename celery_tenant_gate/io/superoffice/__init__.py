"""SuperOffice's side: the State API client, its circuit breaker, the notification token
verifier."""
