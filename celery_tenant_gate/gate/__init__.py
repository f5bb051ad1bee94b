"""The policy: knowing a tenant's state (:mod:`.lookup`), deciding run/hold/drop per
task (:mod:`.screen`), the tenant controls (:mod:`.controls`), the sweep
(:mod:`.sweep`), the move lock (:mod:`.movelock`), telling what was done (:mod:`.report`,
:mod:`.signals`, :mod:`.hooks`), and the :class:`~.gate.Gate` made of them."""
