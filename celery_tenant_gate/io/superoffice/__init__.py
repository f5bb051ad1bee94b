"""SuperOffice's side: the State API client (and the reading of its answers), its circuit
breaker, the notification token verifier."""
